"""STRING, shifted rotary position embedding: distances >= S are shifted to distance - S + W.

An, Zhang et al. 2024, "Why Does the Effective Context Length of LLMs Fall Short?"
(https://arxiv.org/abs/2410.18745). Relative distance r stays r when r < S and becomes
r - S + W otherwise (so distance exactly S is scored as W). Defaults from the paper's
reference: S = original length // 3, W = 128 (at most S // 2 for
very short models). It acts inside the native length too (that
is its point), so factor 1 is allowed. Computed as two bands merged by log-sum-exp: keys
closer than S with the model's own rotation, farther keys with the query rotated back by
S - W. The reference's extra cos/sin factor is not applied (no temperature is stacked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..attention.bands import Band, band_attention
from ..attention.kernels import rotate
from ..attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ..config import param
from ..errors import CtxextError
from ..registry import AttentionMethod, register
from ._shared import whole


@dataclass
class StringConfig(AttentionConfig):
    shifted_offset: int | None = param(None, "S: distances >= S are shifted (default original length // 3)")
    local_value: int | None = param(None, "W: the distance S is scored as W (default 128, at most S // 2)")


class StringRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_string")

    def __init__(self, config: StringConfig, scaling):
        super().__init__(config, scaling)
        self.shift = whole("shifted_offset", config.shifted_offset, scaling.original_length // 3)
        self.local = whole("local_value", config.local_value, min(128, self.shift // 2), minimum=0)
        if self.local >= self.shift:
            raise CtxextError(f"local_value ({self.local}) must be below shifted_offset ({self.shift})")

    def attend(self, call: Call):
        far_q = rotate(call.q, self.local - self.shift, call.inv_freq)

        def bands(i0, i1):
            return [Band(call.q, call.k, call.v, near=0, far=self.shift - 1),
                    Band(far_q, call.k, call.v, near=self.shift, far=math.inf)]

        return band_attention(bands, call.q.shape[2], call.q0, call.scale, narrowest=self.shift - 1)


register(AttentionMethod(
    name="string",
    config_class=StringConfig,
    runtime=StringRuntime,
    summary="STRING: shift relative distances >= S down to W, inside and beyond the native length",
    paper="https://arxiv.org/abs/2410.18745",
))
