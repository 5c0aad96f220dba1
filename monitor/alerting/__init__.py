"""Alert rules, the alert state machine and signed webhook delivery."""
