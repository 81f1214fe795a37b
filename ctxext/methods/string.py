"""STRING, shifted rotary position embedding: distances >= S are shifted to distance - S + W.

An, Zhang et al. 2024, "Why Does the Effective Context Length of LLMs Fall Short?"
(https://arxiv.org/abs/2410.18745). Relative distance r stays r when r < S and becomes
r - S + W otherwise (so distance exactly S is scored as W). Defaults from the paper's
reference: S = original length // 3, W = 128 (at most S // 2 for
very short models). It acts inside the native length too (that
is its point), so factor 1 is allowed. Computed as two bands merged by log-sum-exp: keys
closer than S with the model's own rotation, farther keys with the query rotated back by
S - W.

Two options follow the reference code (HKUNLP/STRING), both off by default:
``shifted_fraction`` sets S from the length rather than from L: the reference uses about a
third of the *test* length (0.25-0.4 suggested); here S = fraction x target length, fixed
for the whole run, so that decoding with the KV cache equals recomputing the prefix.
``reference_scale`` multiplies cos and sin by 1 + 0.1 ln 2 as the reference does, i.e.
the logits by (1 + 0.1 ln 2)^2; refused with log_scaling or on a rope with its own
attention factor, so that two temperatures are never stacked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import apply_rotation, rotation
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ._shared import whole

REFERENCE_FACTOR = 1 + 0.1 * math.log(2)  # the reference's multiplier of cos and sin


@dataclass
class StringConfig(AttentionConfig):
    shifted_offset: int | None = param(None, "S: distances >= S are shifted (default original length // 3)")
    local_value: int | None = param(None, "W: the distance S is scored as W (default 128, at most S // 2)")
    shifted_fraction: float | None = param(
        None, "S as a fraction of the target length, as the reference sets it from the test length (0.25-0.4)"
    )
    reference_scale: bool = param(False, "logits times (1 + 0.1 ln 2)^2, the reference's cos/sin factor (default off)")


class StringRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_string")

    def __init__(self, config: StringConfig, scaling):
        super().__init__(config, scaling)
        fraction = config.shifted_fraction
        if fraction is not None:
            if config.shifted_offset is not None:
                raise CtxextError("give shifted_offset or shifted_fraction, not both")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise CtxextError(f"parameter shifted_fraction must lie between 0 and 1, got {fraction!r}")
        default_shift = scaling.original_length // 3 if fraction is None else round(fraction * scaling.target_length)
        self.shift = whole("shifted_offset", config.shifted_offset, max(1, default_shift))
        self.local = whole("local_value", config.local_value, min(128, self.shift // 2), minimum=0)
        if self.local >= self.shift:
            raise CtxextError(f"local_value ({self.local}) must be below shifted_offset ({self.shift})")
        if not isinstance(config.reference_scale, bool):
            raise CtxextError(f"parameter reference_scale must be true or false, got {config.reference_scale!r}")
        self.logit_factor = REFERENCE_FACTOR**2 if config.reference_scale else 1.0

    def temperature_option(self, config):
        return "STRING's reference_scale" if config.reference_scale else None

    def attend(self, call: Call):
        far_q = apply_rotation(
            call.q,
            self.per_forward(
                ("far", call.q.device), lambda: rotation(self.local - self.shift, call.inv_freq, call.q.device)
            ),
        )

        def bands(i0, i1):
            return [
                Band(call.q, call.k, call.v, near=0, far=self.shift - 1),
                Band(far_q, call.k, call.v, near=self.shift, far=math.inf),
            ]

        return band_attention(bands, call.q.shape[2], call.q0, call.scale * self.logit_factor, narrowest=self.shift - 1)


register(
    AttentionMethod(
        name="string",
        config_class=StringConfig,
        runtime=StringRuntime,
        summary="STRING: shift relative distances >= S down to W, inside and beyond the native length",
        paper="https://arxiv.org/abs/2410.18745",
    )
)
