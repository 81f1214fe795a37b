"""The checks of values every entry point shares: lengths, counts, fractions, dtypes, token ids, and the
bounds on them (what a model can read, what this machine's memory holds).

Each raises a one-line :class:`~ctxext.errors.CtxextError` naming the value, before any model work.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CtxextError
from .rope_setup import text_config

DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CtxextError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


MAX_LENGTH = 4 * 1024 * 1024  # tokens: the longest prompt or window ctxext builds (4m)


def check_length(length, what: str = "length") -> None:
    """A prompt or window length: a positive whole number of tokens, at most :data:`MAX_LENGTH`."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise CtxextError(f"{what} must be a positive whole number of tokens, got {length!r}")
    if length > MAX_LENGTH:
        raise CtxextError(f"{what} {length} is above ctxext's limit of {MAX_LENGTH} tokens (4m)")


MAX_TARGET_LENGTH = 16 * 1024 * 1024  # tokens: the longest context a patch may promise (16m)
MAX_SAMPLES = 10_000  # prompts per task and length (RULER's own runs use 500)
MAX_STEPS = 10_000_000  # fine-tuning steps


def check_count(value, what: str, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CtxextError(f"{what} must be a whole number of at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise CtxextError(f"{what} {value} is above ctxext's limit of {maximum}")


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(needed: int, what: str, advice: str) -> None:
    """Refuse work whose ``needed`` bytes exceed half of the memory available now (the rest is the model's)."""
    available = available_memory()
    if available is not None and needed > available // 2:
        raise CtxextError(
            f"{what} would need about {_size(needed)} of memory and this machine has {_size(available)} available; "
            f"{advice}"
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def check_fraction(values, what: str) -> None:
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in values
    ):
        raise CtxextError(f"{what} must lie in [0, 1]")


def check_token_ids(largest: int, config: Any, what: str) -> None:
    """Refuse token ids the model's embedding has no row for (a tokenizer from another model)."""
    vocab = getattr(text_config(config), "vocab_size", None)
    if isinstance(vocab, int) and largest >= vocab:
        raise CtxextError(
            f"{what} has token id {largest}, beyond the model's vocabulary of {vocab}: "
            "the tokenizer does not belong to this model"
        )
