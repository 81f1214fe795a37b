"""Helpers shared by the rope-frequency methods."""

from __future__ import annotations

from typing import Any

# Keys of a layer type's rope parameters that describe the base rotation, not a scaling.
BASE_KEYS = ("rope_theta", "partial_rotary_factor")


def base_parameters(native: dict[str, Any]) -> dict[str, Any]:
    """The native rope parameters without any scaling the checkpoint may have had."""
    return {key: native[key] for key in BASE_KEYS if key in native}
