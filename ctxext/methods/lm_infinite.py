"""LM-Infinite: a Lambda-shaped mask (leading global tokens + a local window) with distances capped at L.

Han et al. 2024, "LM-Infinite: Zero-Shot Extreme Length Generalization for Large Language
Models" (https://arxiv.org/abs/2308.16137). Query i sees key j iff j is one of the first
``n_global`` tokens of its row or i - j < window; every visible distance is capped at the
original length L (r' = min(r, L)). Defaults: n_global = 10, window = L. Compute and memory
per query are O(window + n_global): a band of the window plus a few global keys, whose
capped part uses the query rotated to position L against the keys rotated back to 0. The
KV cache still holds every key (the mask, not an eviction, bounds the work).
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
class LMInfiniteConfig(AttentionConfig):
    n_global: int = param(10, "leading tokens every query sees (default 10)")
    window: int | None = param(None, "local window in tokens (default the original length)")


class LMInfiniteRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_lm_infinite")

    def __init__(self, config: LMInfiniteConfig, scaling):
        super().__init__(config, scaling)
        self.cap = scaling.original_length
        self.n_global = whole("n_global", config.n_global, 10, minimum=0)
        self.window = whole("window", config.window, self.cap)
        if self.window > self.cap:
            raise CtxextError(f"window ({self.window}) must not exceed the original length ({self.cap})")

    def attend(self, call: Call):
        g = min(self.n_global, call.k.shape[2])
        positions = call.key_positions
        k_global, v_global = call.k[:, :, :g], call.v[:, :, :g]
        at_origin = rotate(k_global, -positions[:g].float(), call.inv_freq)
        at_cap = rotate(call.q, self.cap - positions[call.q0 :].float(), call.inv_freq)

        def bands(i0, i1):
            found = [Band(call.q, call.k, call.v, near=0, far=self.window - 1)]
            if g:
                if self.window < self.cap:
                    found.append(Band(call.q, k_global, v_global, near=self.window, far=self.cap - 1))
                found.append(Band(at_cap, at_origin, v_global, near=max(self.window, self.cap), far=math.inf))
            return found

        return band_attention(bands, call.q.shape[2], call.q0, call.scale, narrowest=self.window - 1)


register(AttentionMethod(
    name="lm-infinite",
    config_class=LMInfiniteConfig,
    runtime=LMInfiniteRuntime,
    summary="LM-Infinite: Lambda mask (global tokens + local window), distances capped at L",
    paper="https://arxiv.org/abs/2308.16137",
    aliases=("lminfinite",),
))
