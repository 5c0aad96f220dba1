"""The OpenAI-compatible proxy: forward bytes, read the few fields we need, splice.

``capture`` decodes only what the proxy records (answer text, finish reason,
usage, chosen and top-K logprobs as numpy arrays) and where each choice's
logprobs sit in the body; ``splice`` edits the body by byte spans (strip or trim
logprobs, add the ``thermostat`` object) instead of re-serialising it; ``sse``
parses the upstream event stream incrementally so chunks are relayed as they
arrive.
"""
