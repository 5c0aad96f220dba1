"""`thermostat demo`: the whole loop on the embedded default, in one command."""
