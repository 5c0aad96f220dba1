"""Model-side pieces of Thermostat: a locally built tiny causal LM and a reference
OpenAI-compatible model server.

Nothing here is imported eagerly: torch and transformers load only when a model is
built or served, so the proxy role never pays for them.
"""
