"""Small helpers shared by the attention-level method modules."""

from __future__ import annotations

import math

import torch

from ..errors import CtxextError
from ..registry import AttentionMethod, register


def whole(name: str, value, default: int, minimum: int = 1) -> int:
    """``value`` (or ``default`` when None) as an integer >= minimum, or a clear error."""
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise CtxextError(f"parameter {name} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise CtxextError(f"parameter {name} must be at least {minimum}, got {int(value)}")
    return int(value)


def key_positions(call) -> torch.Tensor:
    """Absolute positions of the keys of a call (int64, on the call's device)."""
    return call.position + torch.arange(call.k.shape[2], device=call.k.device)


def register_attention(name: str, config_class, runtime, summary: str, paper: str, aliases=()) -> None:
    register(AttentionMethod(name=name, config_class=config_class, summary=summary, paper=paper, runtime=runtime,
                             aliases=tuple(aliases)))
