"""Admin API routes that span features (tasks, alerts, evaluation)."""
