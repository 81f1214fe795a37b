"""DCA, Dual Chunk Attention: intra-chunk, successive-chunk and inter-chunk position ids.

An et al. 2024, "Training-Free Long-Context Scaling of Large Language Models"
(https://arxiv.org/abs/2402.17463). With chunk size c and local window w, positions are
cut into chunks of s = c - w tokens and every key sits at position j mod s. A query at i
uses i mod s against keys of its own chunk, min(i mod s + s, c) against the previous
chunk, and c against older chunks, so every distance stays below c. The three parts are
merged by log-sum-exp. Defaults: c = 3L/4, w = L/8 (the paper's). ``temperature`` adds the
reference's logit scale (0.05 ln(l/L) + 1)^2 for total length l > L; it is refused on top of
a rope that already has an attention factor (YaRN), and together with ``log_scaling``, so two
temperatures are never stacked.

The rotary module is fed positions mod s, so cached keys are already at their DCA positions
and the queries are re-rotated by per-query offsets: decoding needs no key re-rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention import bands as blockwise
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import apply_rotation, rotation
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ._shared import whole


@dataclass
class DCAConfig(AttentionConfig):
    chunk_size: int | None = param(None, "c: largest distance used (default 3/4 of the original length)")
    local_window: int | None = param(None, "w: overlap kept by the successive-chunk part (default original length / 8)")
    temperature: bool = param(False, "scale logits by (0.05 ln(l/L) + 1)^2 beyond the original length (default off)")


def chunk_sizes(chunk_size: int | None, local_window: int | None, original_length: int) -> tuple[int, int]:
    """(c, w): the chunk size and local window with their defaults (3L/4, L/8), checked."""
    chunk = whole("chunk_size", chunk_size, 3 * original_length // 4)
    local = whole("local_window", local_window, original_length // 8)
    if not local < chunk <= original_length:
        raise CtxextError(f"need local_window < chunk_size <= original length, got {local}, {chunk}, {original_length}")
    return chunk, local


class DCARuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_dca")

    def __init__(self, config: DCAConfig, scaling):
        super().__init__(config, scaling)
        self.chunk, self.local = chunk_sizes(config.chunk_size, config.local_window, scaling.original_length)
        self.stride = self.chunk - self.local
        if not isinstance(config.temperature, bool):
            raise CtxextError(f"parameter temperature must be true or false, got {config.temperature!r}")

    def temperature_option(self, config):
        return "DCA's temperature" if config.temperature else None

    def remap_positions(self, positions):
        return positions % self.stride

    def attend(self, call: Call):
        s = self.stride
        n, m = call.q.shape[2], call.k.shape[2]
        tables = self.per_forward(
            ("queries", call.position + call.q0, n, call.q.device), lambda: self._query_rotations(call)
        )
        q_next, q_far = apply_rotation(call.q, tables)
        scale = call.scale
        total = call.position + m
        if self.config.temperature and total > self.scaling.original_length:
            scale *= (0.05 * math.log(total / self.scaling.original_length) + 1) ** 2

        def bands(i0, i1):
            start = ((call.position + i0) // s) * s - call.position  # key index of the query chunk's start
            return [
                Band(call.q, call.k, call.v, lo=start),
                Band(q_next, call.k, call.v, lo=start - s, hi=start),
                Band(q_far, call.k, call.v, lo=0, hi=start - s),
            ]

        blocks = []
        i = call.q0
        while i < m:
            chunk_end = ((call.position + i) // s + 1) * s - call.position
            end = min(m, chunk_end, i + blockwise.BLOCK)
            blocks.append((i, end))
            i = end
        return band_attention(bands, n, call.q0, scale, blocks)

    def _query_rotations(self, call: Call):
        """Tables turning the queries to their successive- and inter-chunk positions, stacked on a
        leading axis of 2, so that one application yields both."""
        s, c = self.stride, self.chunk
        inside = (call.position + call.q0 + torch.arange(call.q.shape[2], device=call.q.device)) % s
        deltas = torch.stack((torch.clamp(inside + s, max=c) - inside, c - inside))
        return rotation(deltas[:, None, None, :], call.inv_freq, call.q.device)


register(
    AttentionMethod(
        name="dca",
        config_class=DCAConfig,
        runtime=DCARuntime,
        summary="Dual Chunk Attention: intra/successive/inter-chunk positions, all distances below the chunk size",
        paper="https://arxiv.org/abs/2402.17463",
        aliases=("dual-chunk",),
    )
)
