"""Tasks: the unit everything is measured, alerted on and recalibrated per."""
