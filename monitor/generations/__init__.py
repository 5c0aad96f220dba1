"""Generations: one proxied answer each, with its stored logprobs and feedback."""
