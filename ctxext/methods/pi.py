"""PI, Position Interpolation: positions m -> m / s, i.e. every inverse frequency / s.

Chen et al. 2023, "Extending Context Window of Large Language Models via Positional
Interpolation". Written as transformers' ``linear`` rope type, so stock transformers
reloads it. Works best after a short fine-tune (the paper: <= 1000 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.params import MethodConfig
from ..core.registry import RopeMethod, Scaling, register
from ._shared import base_parameters


@dataclass
class PIConfig(MethodConfig):
    """Position Interpolation takes only the scale factor."""


def build(native: dict, scaling: Scaling, config: PIConfig) -> dict:
    return {**base_parameters(native), "rope_type": "linear", "factor": float(scaling.factor)}


register(
    RopeMethod(
        name="pi",
        aliases=("linear",),
        config_class=PIConfig,
        summary="Position Interpolation: divide every rotary frequency by the factor",
        paper="https://arxiv.org/abs/2306.15595",
        build=build,
    )
)
