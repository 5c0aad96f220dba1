"""The decode loop hands the KV cache over under the name the installed transformers uses."""

from __future__ import annotations

from typing import Any

from monitor.serving.model_server.generation import _cache_name


class _Transformers5Model:
    def forward(self, input_ids: Any = None, cache: Any = None, use_cache: bool = False) -> None:
        """transformers 5: `cache`, with `past_key_values` deprecated."""


class _Transformers4Model:
    def forward(
        self, input_ids: Any = None, past_key_values: Any = None, use_cache: bool = False
    ) -> None:
        """transformers 4.x, which pyproject still allows: only `past_key_values`."""


def test_cache_name_follows_the_forward_signature() -> None:
    assert _cache_name(_Transformers5Model()) == "cache"
    assert _cache_name(_Transformers4Model()) == "past_key_values"
