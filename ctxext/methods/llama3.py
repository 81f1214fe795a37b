"""Llama 3.1 frequency scaling: wavelength bands kept, interpolated, or smoothly blended.

Meta, "The Llama 3 Herd of Models" (2024). Wavelengths shorter than L / high_freq_factor
keep their frequency, those longer than L / low_freq_factor are divided by s, the band in
between is blended. Written as transformers' ``llama3`` rope type.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.params import MethodConfig, param
from ..core.registry import RopeMethod, Scaling, register
from ..errors import CtxextError
from ._shared import base_parameters


@dataclass
class Llama3Config(MethodConfig):
    """Parameters of Llama-3 scaling (defaults of Llama 3.1)."""

    low_freq_factor: float = param(1.0, "wavelengths above L/low_freq_factor are divided by s")
    high_freq_factor: float = param(4.0, "wavelengths below L/high_freq_factor are kept")

    def check(self) -> None:
        super().check()
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise CtxextError(
                "llama3 needs 0 < low_freq_factor < high_freq_factor, "
                f"got {self.low_freq_factor} and {self.high_freq_factor}"
            )


def build(native: dict, scaling: Scaling, config: Llama3Config) -> dict:
    return {
        **base_parameters(native),
        "rope_type": "llama3",
        "factor": float(scaling.factor),
        "original_max_position_embeddings": int(scaling.original_length),
        "low_freq_factor": float(config.low_freq_factor),
        "high_freq_factor": float(config.high_freq_factor),
    }


register(
    RopeMethod(
        name="llama3",
        config_class=Llama3Config,
        summary="Llama 3.1 wavelength-band interpolation",
        paper="https://arxiv.org/abs/2407.21783",
        build=build,
    )
)
