"""The one place that knows how transformers versions name the KV cache.

transformers renamed the cache argument and output field from ``past_key_values`` to
``cache`` during 5.x (the old keyword warns and goes away in 5.40). ctxext supports every
5.x release, so it passes and reads the cache under whichever name the model uses.
"""

from __future__ import annotations

import inspect


def cache_keyword(model) -> str:
    """``"cache"`` when the model's forward takes it, else ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def cache_given(kwargs: dict):
    """The KV cache passed to a layer or attention module, under either name."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")
