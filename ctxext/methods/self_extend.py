"""SelfExtend: neighbour attention inside a window W, grouped (floor-divided) positions beyond it.

Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning"
(https://arxiv.org/abs/2401.01325). For distance r = i - j: r if r < W, else
floor(i/G) - floor(j/G) + W - floor(W/G). Defaults: W = original length // 4 (the paper's
1024 for 4k Llama-2) and the smallest G with (L - W) * G + W >= target length (the paper's
condition for every grouped distance to stay inside the pretraining range).

The rotary module is fed floor(position / G), so the KV cache holds keys at their grouped
positions; the neighbour band re-rotates only the last W keys to their true positions, so
decoding costs O(W) extra work per token, not O(n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import apply_rotation, rotation
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ._shared import whole


@dataclass
class SelfExtendConfig(AttentionConfig):
    group_size: int | None = param(
        None, "G: positions beyond the window are floor-divided by G (default from the factor)"
    )
    window: int | None = param(None, "W: neighbour window with exact positions (default original length // 4)")


class SelfExtendRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_self_extend")

    def __init__(self, config: SelfExtendConfig, scaling):
        super().__init__(config, scaling)
        length = scaling.original_length
        self.window = whole("window", config.window, length // 4)
        if self.window >= length:
            raise CtxextError(f"window ({self.window}) must be below the original length ({length})")
        needed = math.ceil((scaling.target_length - self.window) / (length - self.window))
        self.group = whole("group_size", config.group_size, max(1, needed))
        self.shift = self.window - self.window // self.group

    def remap_positions(self, positions):
        return positions // self.group

    def attend(self, call: Call):
        near_start = max(0, call.q0 - self.window + 1)
        key = ("rotations", call.position, call.q0, call.k.shape[2], call.k.device)
        key_tables, query_tables = self.per_forward(key, lambda: self._rotations(call, near_start))
        k_near = apply_rotation(call.k[:, :, near_start:], key_tables)
        q_near, q_grouped = apply_rotation(call.q, query_tables)

        def bands(i0, i1):
            return [
                Band(q_near, k_near, call.v[:, :, near_start:], near=0, far=self.window - 1, offset=near_start),
                Band(q_grouped, call.k, call.v, near=self.window, far=math.inf),
            ]

        return band_attention(bands, call.q.shape[2], call.q0, call.scale, narrowest=self.window - 1)

    def _rotations(self, call: Call, near_start: int):
        """Tables turning the neighbour keys and the queries from grouped to true positions, and
        the queries to the grouped band's shift (these two stacked on a leading axis of 2)."""
        positions = call.key_positions
        near_positions = positions[near_start:]
        query_positions = positions[call.q0 :]
        query_deltas = torch.stack(
            (query_positions - query_positions // self.group, torch.full_like(query_positions, self.shift))
        )
        return (
            rotation(near_positions - near_positions // self.group, call.inv_freq, call.k.device),
            rotation(query_deltas[:, None, None, :], call.inv_freq, call.q.device),
        )


register(
    AttentionMethod(
        name="self-extend",
        config_class=SelfExtendConfig,
        runtime=SelfExtendRuntime,
        summary="SelfExtend: exact positions in a neighbour window, floor(pos / G) grouped positions beyond",
        paper="https://arxiv.org/abs/2401.01325",
        aliases=("selfextend",),
    )
)
