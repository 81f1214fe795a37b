"""NTK-aware scaling (fixed): raise the RoPE base to b * s^(d / (d - 2)).

bloc97, "NTK-Aware Scaled RoPE" (2023). High-frequency dimensions keep (almost) their
rotation, low-frequency ones are interpolated by about s. It is only a new ``rope_theta``,
so stock transformers reloads it with the ``default`` rope type. Some dimensions still
extrapolate: a factor a little above target/L often works better.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.params import MethodConfig
from ..core.registry import RopeMethod, Scaling, register
from ._shared import base_parameters


@dataclass
class NTKConfig(MethodConfig):
    """Fixed NTK-aware scaling takes only the scale factor."""


def ntk_theta(theta: float, rotary_dim: int, factor: float) -> float:
    """The NTK-aware base for scale ``factor`` over a rotary dimension ``rotary_dim``."""
    return float(theta) * float(factor) ** (rotary_dim / (rotary_dim - 2))


def build(native: dict, scaling: Scaling, config: NTKConfig) -> dict:
    theta = ntk_theta(native["rope_theta"], scaling.rotary_dim, scaling.factor)
    return {**base_parameters(native), "rope_type": "default", "rope_theta": theta}


register(
    RopeMethod(
        name="ntk",
        config_class=NTKConfig,
        summary="NTK-aware scaling: raise the rotary base to b * s^(d/(d-2))",
        paper="https://www.reddit.com/r/LocalLLaMA/comments/14lz7j5/",
        build=build,
    )
)
