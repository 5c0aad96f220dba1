"""Everything that differs between SQLite and Postgres lives in this package."""
