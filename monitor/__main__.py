"""`python -m monitor` is the same as the `thermostat` command."""

from monitor.cli import main

raise SystemExit(main())
