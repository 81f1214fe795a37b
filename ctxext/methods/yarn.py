"""YaRN: NTK-by-parts interpolation plus an attention temperature.

Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models".
Per rotary pair i the ramp between beta_fast and beta_slow rotations over the original
length decides whether the frequency is kept (high frequencies) or divided by s (low
frequencies); cos and sin are both multiplied by 0.1 * ln(s) + 1. Written as transformers'
``yarn`` rope type, so stock transformers reloads it. :func:`yarn_inv_freq` is our own
formula, used by ``dynamic-yarn`` and checked against transformers in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import MethodConfig, param
from ..core.registry import RopeMethod, Scaling, register
from ..errors import CtxextError
from ._shared import base_parameters


@dataclass
class YarnConfig(MethodConfig):
    """Parameters of YaRN (defaults from the paper)."""

    beta_fast: float = param(32.0, "rotations over L above which a dimension is not interpolated")
    beta_slow: float = param(1.0, "rotations over L below which a dimension is fully interpolated")
    attention_factor: float | None = param(None, "cos/sin multiplier; default 0.1*ln(s)+1")

    def check(self) -> None:
        super().check()
        if not 0 < self.beta_slow < self.beta_fast:
            raise CtxextError(f"yarn needs 0 < beta_slow < beta_fast, got {self.beta_slow} and {self.beta_fast}")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise CtxextError(f"yarn attention_factor must be > 0, got {self.attention_factor}")


def yarn_mscale(factor: float) -> float:
    """YaRN's attention temperature for scale ``factor`` (1 when not scaling)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_inv_freq(
    theta: float, rotary_dim: int, original_length: int, factor: float, beta_fast: float, beta_slow: float
) -> torch.Tensor:
    """fp32 inverse frequencies of YaRN's NTK-by-parts interpolation."""

    def correction_dim(rotations: float) -> float:
        return rotary_dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1 where the dimension rotates fast enough to extrapolate
    return (inv_freq / factor) * (1 - keep) + inv_freq * keep


def build(native: dict, scaling: Scaling, config: YarnConfig) -> dict:
    parameters = {
        **base_parameters(native),
        "rope_type": "yarn",
        "factor": float(scaling.factor),
        "original_max_position_embeddings": int(scaling.original_length),
        "beta_fast": float(config.beta_fast),
        "beta_slow": float(config.beta_slow),
    }
    if config.attention_factor is not None:
        parameters["attention_factor"] = float(config.attention_factor)
    return parameters


register(
    RopeMethod(
        name="yarn",
        config_class=YarnConfig,
        summary="NTK-by-parts interpolation with attention temperature 0.1*ln(s)+1",
        paper="https://arxiv.org/abs/2309.00071",
        build=build,
    )
)
