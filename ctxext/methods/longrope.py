"""LongRoPE: per-dimension rescale factors, one list for short inputs and one for long ones.

Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens". The
factors come from the paper's evolutionary search (``ctxext tune --methods longrope`` runs one,
``ctxext.eval.longrope_search``) or from the user: a list of d/2 numbers, one number for all
dimensions, or ``"@FILE"``, a JSON file holding the list (what the search writes). Inputs up to L use
``short_factor``, longer ones ``long_factor``; cos/sin are multiplied by
sqrt(1 + ln(s) / ln(L)) unless ``attention_factor`` is given. Written as transformers'
``longrope`` rope type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.params import MethodConfig, param
from ..core.registry import RopeMethod, Scaling, register
from ..core.user_files import read_text_file
from ..errors import CtxextError
from ._shared import base_parameters


@dataclass
class LongRopeConfig(MethodConfig):
    """Parameters of LongRoPE."""

    long_factor: list[float] | float | None = param(
        None, "rescale factors (d/2 numbers, one, or @FILE.json) beyond L; required"
    )
    short_factor: list[float] | float = param(1.0, "rescale factors (d/2 numbers, one, or @FILE.json) up to L")
    attention_factor: float | None = param(None, "cos/sin multiplier; default sqrt(1+ln(s)/ln(L))")

    def check(self) -> None:
        super().check()
        if self.long_factor is None:
            raise CtxextError("longrope needs long_factor (d/2 numbers, or one number for all dimensions)")
        for name in ("long_factor", "short_factor"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, read_factors(name, getattr(self, name)))
            values = getattr(self, name)
            values = values if isinstance(values, list) else [values]
            if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
                raise CtxextError(f"longrope {name} must be positive numbers, got {getattr(self, name)!r}")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise CtxextError(f"longrope attention_factor must be > 0, got {self.attention_factor}")


def read_factors(name: str, spec: str) -> list[float]:
    """The factor list in the JSON file named by ``spec`` ("@FILE"), or a one-line CtxextError."""
    if not spec.startswith("@"):
        raise CtxextError(f"longrope {name} must be numbers or '@FILE' (a JSON list of numbers), got {spec!r}")
    path = Path(spec[1:]).expanduser()
    text = read_text_file(path, "JSON file", f"longrope {name} {spec}")
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise CtxextError(f"longrope {name} {spec}: {path} is not JSON ({str(exc).splitlines()[0]})") from None
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise CtxextError(f"longrope {name} {spec}: {path} must hold a JSON list of numbers")
    return [float(v) for v in values]


def _per_dimension(name: str, values: list[float] | float, rotary_dim: int) -> list[float]:
    if not isinstance(values, list):
        return [float(values)] * (rotary_dim // 2)
    if len(values) != rotary_dim // 2:
        raise CtxextError(f"longrope {name} needs {rotary_dim // 2} numbers (rotary dim / 2), got {len(values)}")
    return [float(v) for v in values]


def build(native: dict, scaling: Scaling, config: LongRopeConfig) -> dict:
    parameters = {
        **base_parameters(native),
        "rope_type": "longrope",
        "factor": float(scaling.factor),
        "original_max_position_embeddings": int(scaling.original_length),
        "long_factor": _per_dimension("long_factor", config.long_factor, scaling.rotary_dim),
        "short_factor": _per_dimension("short_factor", config.short_factor, scaling.rotary_dim),
    }
    if config.attention_factor is not None:
        parameters["attention_factor"] = float(config.attention_factor)
    return parameters


register(
    RopeMethod(
        name="longrope",
        config_class=LongRopeConfig,
        summary="per-dimension rescale factors (user-given short/long lists)",
        paper="https://arxiv.org/abs/2402.13753",
        build=build,
    )
)
