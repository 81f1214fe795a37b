"""Helpers shared by the method modules (not a method: registers nothing)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import CtxextError

# Keys of a layer type's rope parameters that describe the base rotation, not a scaling.
BASE_KEYS = ("rope_theta", "partial_rotary_factor")


def base_parameters(native: dict[str, Any]) -> dict[str, Any]:
    """The native rope parameters without any scaling the checkpoint may have had."""
    return {key: native[key] for key in BASE_KEYS if key in native}


def whole(name: str, value, default: int, minimum: int = 1) -> int:
    """``value`` (or ``default`` when None) as an integer >= minimum, or a clear error."""
    value = default if value is None else value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise CtxextError(f"parameter {name} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise CtxextError(f"parameter {name} must be at least {minimum}, got {int(value)}")
    return int(value)


def one_of(name: str, value, choices: tuple[str, ...]) -> None:
    """A clear error naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise CtxextError(f"parameter {name} must be one of {', '.join(choices)}, got {value!r}")
