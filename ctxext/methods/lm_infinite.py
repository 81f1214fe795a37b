"""LM-Infinite: a Lambda-shaped mask (leading global tokens + a local window) with distances capped at L.

Han et al. 2024, "LM-Infinite: Zero-Shot Extreme Length Generalization for Large Language
Models" (https://arxiv.org/abs/2308.16137). Query i sees key j iff j is one of the first
``n_global`` tokens of its row or i - j < window; every visible distance is capped at the
original length L (r' = min(r, L)). Defaults: n_global = 10, window = L. Without top-k,
compute and memory per query are O(window + n_global): a band of the window plus a few global keys, whose
capped part uses the query rotated to position L against the keys rotated back to 0. The
KV cache still holds every key (the mask, not an eviction, bounds the work).

The Lambda mask hides the middle of a long prompt, so a passkey there is lost. The
optional top-k middle-token attention brings it back: with ``top_k`` > 0, in layers
``top_k_from_layer`` and later, each query head scores the middle keys (j >= n_global and
i - j >= window: those no other part sees) as if at the fixed distance ``top_k_distance``
(the query rotated to that position, the keys rotated back to 0), keeps the ``top_k`` with
the largest logits, and adds them to its softmax with those logits. The reference's passkey
setting is top_k = 5 from layer 4 at distance 2048 (Llama-2, L = 4096); the defaults here
are top_k = 0 (off), layer 4 and L // 2. The reference retrieves only for the last prompt
token and decoded tokens; here every query does, so a prompt gives the same logits whether
it is run at once or token by token with the KV cache. This part is not bounded: scoring
costs O(n x middle) per layer (every query scores every middle key; memory stays bounded,
queries are scored in chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import rotate
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ..model.attention.topk import top_k_attention
from ._shared import whole


@dataclass
class LMInfiniteConfig(AttentionConfig):
    n_global: int = param(10, "leading tokens every query sees (default 10)")
    window: int | None = param(None, "local window in tokens (default the original length)")
    top_k: int = param(
        0,
        "middle tokens (outside the window and the global tokens) each query head retrieves by "
        "top-k logits (default 0: off, the plain Lambda mask; the reference's passkey setting is 5)",
    )
    top_k_from_layer: int = param(4, "first layer that retrieves top-k middle tokens (default 4, as the reference)")
    top_k_distance: int | None = param(
        None,
        "distance at which retrieved middle tokens are scored (default L // 2: 2048 for L = 4096, as the reference)",
    )


class LMInfiniteRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_lm_infinite")

    def __init__(self, config: LMInfiniteConfig, scaling):
        super().__init__(config, scaling)
        self.cap = scaling.original_length
        self.n_global = whole("n_global", config.n_global, 10, minimum=0)
        self.window = whole("window", config.window, self.cap)
        if self.window > self.cap:
            raise CtxextError(f"window ({self.window}) must not exceed the original length ({self.cap})")
        self.top_k = whole("top_k", config.top_k, 0, minimum=0)
        self.top_k_from_layer = whole("top_k_from_layer", config.top_k_from_layer, 4, minimum=0)
        self.top_k_distance = whole("top_k_distance", config.top_k_distance, self.cap // 2, minimum=0)
        if self.top_k_distance > self.cap:
            raise CtxextError(
                f"top_k_distance ({self.top_k_distance}) must not exceed the original length ({self.cap})"
            )

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

        middle = self._middle_top_k(call, g) if self.top_k and call.module.layer_idx >= self.top_k_from_layer else None
        return band_attention(
            bands, call.q.shape[2], call.q0, call.scale, narrowest=self.window - 1, extra_parts=middle
        )

    def _middle_top_k(self, call: Call, g: int):
        """``extra_parts`` for band_attention: a query block's top-k middle keys (g <= j <= i - window) scored
        at top_k_distance, or None when no query of the call has a middle key."""
        end = max(g, call.k.shape[2] - self.window)  # the last query's middle keys end here
        if end == g:
            return None
        positions = call.key_positions
        keys = rotate(call.k[:, :, g:end], -positions[g:end].float(), call.inv_freq)
        values = call.v[:, :, g:end]
        queries = rotate(call.q, self.top_k_distance - positions[call.q0 :].float(), call.inv_freq)

        def part(i0, i1):
            if i1 - self.window - g <= 0:  # no query of the block has a middle key yet
                return []
            ends = (torch.arange(i0, i1, device=keys.device) - self.window + 1 - g).clamp(min=0)
            return [
                top_k_attention(queries[:, :, i0 - call.q0 : i1 - call.q0], keys, values, ends, self.top_k, call.scale)
            ]

        return part


register(
    AttentionMethod(
        name="lm-infinite",
        config_class=LMInfiniteConfig,
        runtime=LMInfiniteRuntime,
        summary="LM-Infinite: Lambda mask (global tokens + local window), distances capped at L; "
        "optional top-k middle tokens",
        paper="https://arxiv.org/abs/2308.16137",
        aliases=("lminfinite",),
    )
)
