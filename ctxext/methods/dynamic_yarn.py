"""Dynamic YaRN: YaRN with the scale recomputed from the current length, s = max(1, l / L).

From the YaRN reference implementation (not a transformers rope type). Registered as the
rope type ``ctxext_dynamic_yarn`` in transformers' ``ROPE_INIT_FUNCTIONS`` when ctxext is
imported; the name contains "dynamic" so transformers' own dynamic update recomputes it as
the length grows; ctxext's pre-hook (:mod:`ctxext.methods._dynamic`) also resets the
temperature, which transformers' update does not. Load such checkpoints with
``ctxext.from_pretrained``. Not available for per-layer-type rope configs (Gemma 3),
where transformers' update does not track per-layer temperatures.
The KV-cache caveat of dynamic-ntk applies here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ..core.params import MethodConfig, param
from ..core.registry import RopeMethod, Scaling, register
from ..errors import CtxextError
from ._dynamic import make_history_independent
from ._shared import base_parameters
from .yarn import yarn_inv_freq, yarn_mscale

ROPE_TYPE = "ctxext_dynamic_yarn"


@dataclass
class DynamicYarnConfig(MethodConfig):
    """Parameters of dynamic YaRN (defaults from the paper)."""

    beta_fast: float = param(32.0, "rotations over L above which a dimension is not interpolated")
    beta_slow: float = param(1.0, "rotations over L below which a dimension is fully interpolated")

    def check(self) -> None:
        super().check()
        if not 0 < self.beta_slow < self.beta_fast:
            raise CtxextError(
                f"dynamic-yarn needs 0 < beta_slow < beta_fast, got {self.beta_slow} and {self.beta_fast}"
            )


def compute_dynamic_yarn_parameters(config, device=None, seq_len=None, layer_type=None):
    """transformers rope-init function for ``ctxext_dynamic_yarn``."""
    if layer_type is not None:
        raise CtxextError("ctxext_dynamic_yarn does not support per-layer-type rope parameters")
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    original_length = rope["original_max_position_embeddings"]
    factor = max(1.0, float(seq_len) / original_length) if seq_len is not None else 1.0
    inv_freq = yarn_inv_freq(
        rope["rope_theta"], rotary_dim, original_length, factor, rope["beta_fast"], rope["beta_slow"]
    )
    return inv_freq.to(device), yarn_mscale(factor)


ROPE_INIT_FUNCTIONS[ROPE_TYPE] = compute_dynamic_yarn_parameters


def build(native: dict, scaling: Scaling, config: DynamicYarnConfig) -> dict:
    return {
        **base_parameters(native),
        "rope_type": ROPE_TYPE,
        "original_max_position_embeddings": int(scaling.original_length),
        "beta_fast": float(config.beta_fast),
        "beta_slow": float(config.beta_slow),
    }


register(
    RopeMethod(
        name="dynamic-yarn",
        config_class=DynamicYarnConfig,
        summary="YaRN with the scale recomputed from the current length (no change up to L)",
        paper="https://arxiv.org/abs/2309.00071",
        build=build,
        dynamic=True,
        stock_loadable=False,
        supports_per_layer_type=False,
        prepare_module=make_history_independent,
    )
)
