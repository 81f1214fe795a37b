"""GALI, greedy attention logit interpolation: as few fractional positions as the current length needs.

Li et al. 2025, "A Training-Free Length Extrapolation Approach for LLMs: Greedy Attention Logit
Interpolation" (https://arxiv.org/abs/2502.02659, reference https://github.com/AcademyCityL/GALI,
``models/DPI/help_funcs.py`` and ``models/DPI/patches/Llama.py``). For a sequence of T > L tokens
(L the original length, w the local window) the positions are rebuilt (``construct_new_pi``):
G = ceil((T - w) / (L - w)), k = the fewest integer positions to split, ceil((T - L) / (G - 1)),
so the first f = T - L + k keys sit at j / G (interval 1/G) and the other L - k >= w keys keep
integer positions k .. L - 1; the newest token sits at L - 1. Up to L tokens nothing changes.
The reference's ``start_pos`` (leading positions kept exact) is never set there, so it is 0 and
not offered. The factor is not used either: the positions follow the current length.
A key at a fractional position gets the attention logit interpolated linearly between the logits
at the two neighbouring integer distances, instead of a rotation by a fractional angle (the
reference's ``appro_attn``); the Gaussian noise of ``add_gaussian_noise_to_rel_coef`` is added to
those logits, std = std_base x (i - j) / T, on keys at non-integer positions only.

Every query is computed with the positions of its own length T = (its position) + 1, which is
how the reference decodes. The reference prefills in chunks (``get_chunk_size_list``: first L
tokens, then ``chunk_coe`` = 3000 per chunk) whose queries share the positions of the chunk's
end; that makes a token's logits depend on how many tokens follow it in the prompt, so cached
decoding could not equal recomputing the sequence, and ctxext has no ``chunk_coe`` (it is the
reference with chunk_coe 1). The noise is a hash of (noise_seed, layer, head, query position, key
position), so it is the same in a one-pass prompt, in decoding and in every row of a batch.

How it runs: the rotary module keeps the true positions, so the KV cache holds keys rotated at
j. The query at position T - 1 is turned to L - 1. Because the interpolation weight of a key,
c = ceil(j/G) - j/G, depends on the key alone, the interpolated logit is the dot product with one
mixed key (1 - c) R(ceil(j/G)) k + c R(floor(j/G)) k, so without noise the fractional keys are one
more band of fused kernels: per block of queries, the keys every query sees at fractional
positions, the keys every query sees exactly (up to the diagonal), and a masked strip between
them where the boundary moves with the query. The queries are split where G changes. With noise
the fractional part is computed from explicit logits, in chunks: O(n^2) work, bounded memory.
Decoding re-rotates the fractional keys, O(n) per token and layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention import bands as blockwise
from ..model.attention.bands import Band, band_attention, even_blocks
from ..model.attention.kernels import Partial, apply_rotation, attend, rotation
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ..model.attention.topk import SCORE_BUDGET
from ._shared import whole

# Query blocks are at most this long, so that the masked strip, about as wide as a block, stays a
# small part of a block's work.
STRIP_BLOCK = 128

_MASK32 = 0xFFFFFFFF


@dataclass
class GALIConfig(AttentionConfig):
    local_window: int = param(
        128,
        "w: at least the last w keys keep exact distances (default 128, the "
        "reference README; its expcfg file uses 1); must be below the original length",
    )
    logit_interpolation: bool = param(
        True,
        "fractional distances get the logit interpolated between the two "
        "neighbouring integer distances (the reference's appro_attn, default "
        "on); off: keys rotated to the fractional position (plain interpolation)",
    )
    noise: bool = param(
        True,
        "Gaussian noise on the interpolated logits, std = std_base x distance / length, "
        "on keys at non-integer positions (the reference's noise_type gaussian, default on)",
    )
    std_base: float = param(1.0, "noise std at the largest distance (the reference's std_base, default 1.0)")
    noise_seed: int = param(0, "seed of the noise: the same seed gives the same logits (default 0)")

    def check(self) -> None:
        super().check()
        for name in ("logit_interpolation", "noise"):
            if not isinstance(getattr(self, name), bool):
                raise CtxextError(f"parameter {name} must be true or false, got {getattr(self, name)!r}")
        if self.std_base < 0:
            raise CtxextError(f"parameter std_base must be at least 0, got {self.std_base}")
        if self.noise and not self.logit_interpolation:
            raise CtxextError(
                "noise is part of the logit interpolation: with logit_interpolation=false set noise=false"
            )


def interpolation(lengths: torch.Tensor, original_length: int, local_window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, f) per sequence length T (int64 tensors): the first f positions of T tokens sit at j / G.

    Up to the original length G = 1 and f = 0 (no position changes).
    """
    beyond = lengths > original_length
    group = torch.where(beyond, -((local_window - lengths) // (original_length - local_window)), 1)
    split = -((original_length - lengths) // (group - 1).clamp(min=1))  # k: integer positions split into G
    return group, torch.where(beyond, lengths - original_length + split, 0)


def positions(length: int, original_length: int, local_window: int) -> torch.Tensor:
    """The positions (float64) of ``length`` tokens, as the reference's ``construct_new_pi`` builds them."""
    group, fractional = (int(x) for x in interpolation(torch.tensor(length), original_length, local_window))
    j = torch.arange(length, dtype=torch.float64)
    return torch.where(j < fractional, j / group, j - max(0, length - original_length))


def _mix32(x):
    """A 32-bit integer hash (lowbias32's shifts; multipliers below 2^31, so int64 products never overflow)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def standard_normal(
    seed: int, layer: int, heads: int, query_positions: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """One standard normal number (fp32) per (head, query position, key position): (heads, nq, nk).

    A pure function of its arguments (positions as int64 tensors on one device), so every call,
    block split and batch row gets the same numbers for the same pair. Heads, queries and keys are
    hashed on their own; each pair then costs one more multiply-xorshift round (this runs on every
    noisy logit).
    """
    base = _mix32(_mix32(seed & _MASK32) ^ (layer & _MASK32))
    per_head = _mix32((base + torch.arange(heads, device=query_positions.device)) & _MASK32)
    per_query = _mix32(per_head[:, None] ^ (query_positions & _MASK32)[None, :])
    per_key = _mix32(_mix32(key_positions & _MASK32) ^ base)
    bits = per_query[:, :, None] ^ per_key[None, None, :]
    bits.mul_(0x7FEB352D).bitwise_and_(_MASK32)
    bits.bitwise_xor_(bits >> 15)
    symmetric = ((bits >> 8) * 2 - (2**24 - 1)).float().mul_(2.0**-24)  # uniform in (-1, 1), never at either end
    return symmetric.erfinv_().mul_(math.sqrt(2))  # the normal's inverse CDF; erfinv is twice as fast as ndtri


class GALIRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_gali")

    def __init__(self, config: GALIConfig, scaling):
        super().__init__(config, scaling)
        self.length = scaling.original_length
        self.window = whole("local_window", config.local_window, 128)
        if self.window >= self.length:
            raise CtxextError(f"local_window ({self.window}) must be below the original length ({self.length})")
        self.noise_seed = whole("noise_seed", config.noise_seed, 0, minimum=0)

    def attend(self, call: Call):
        n = call.q.shape[2]
        lengths = call.key_positions[call.q0 :] + 1
        groups, fractional = interpolation(lengths, self.length, self.window)
        if not bool(fractional.any()):  # every query inside the original length: plain causal attention
            return band_attention(lambda i0, i1: [Band(call.q, call.k, call.v)], n, call.q0, call.scale)
        limits = (fractional - call.position).clamp(min=0)  # as key indexes: keys [0, limit) are fractional
        tables = self.per_forward(
            ("queries", call.position + call.q0, n, call.q.device),
            lambda: rotation(self.length - lengths, call.inv_freq, call.q.device),
        )
        q_far = apply_rotation(call.q, tables)  # each query turned from its position to L - 1
        outputs, start = [], 0
        group_values, counts = torch.unique_consecutive(groups, return_counts=True)
        for group, count in zip(group_values.tolist(), counts.tolist()):
            outputs.append(self._segment(call, q_far, group, limits, start, start + count))
            start += count
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _segment(self, call: Call, q_far: torch.Tensor, group: int, limits: torch.Tensor, t0: int, t1: int):
        """Output of the queries t0 .. t1 - 1 of the call, which share G = ``group``."""
        q0 = call.q0 + t0  # key index of the segment's first query
        q, q_far, limits = call.q[:, :, t0:t1], q_far[:, :, t0:t1], limits[t0:t1]
        width = int(limits[-1])
        keys = self._fractional_keys(call, group, width) if width else None
        values = call.v[:, :, :width]
        noisy = self.config.noise and width > 0

        def bands(i0, i1):
            lo, hi = int(limits[i0 - q0]), int(limits[i1 - 1 - q0])
            found = [Band(q, call.k, call.v, lo=hi)]  # exact for every query of the block
            if lo and not noisy:
                found.append(Band(q_far, keys, values, hi=lo))  # fractional for every query of the block
            return found

        def extra_parts(i0, i1):
            lo, hi = int(limits[i0 - q0]), int(limits[i1 - 1 - q0])
            rows = slice(i0 - q0, i1 - q0)
            limit = limits[rows, None]
            parts = []
            if lo < hi:  # the strip where the boundary moves from query to query
                columns = torch.arange(lo, hi, device=q.device)[None, :]
                query_index = torch.arange(i0, i1, device=q.device)[:, None]
                exact = (columns >= limit) & (columns <= query_index)
                parts.append(attend(q[:, :, rows], call.k[:, :, lo:hi], call.v[:, :, lo:hi], call.scale, mask=exact))
                if not noisy:
                    parts.append(
                        attend(
                            q_far[:, :, rows], keys[:, :, lo:hi], values[:, :, lo:hi], call.scale, mask=columns < limit
                        )
                    )
            if noisy:
                query_positions = call.position + torch.arange(i0, i1, device=q.device)
                parts.append(
                    self._noisy_fractional(
                        call,
                        q_far[:, :, rows],
                        keys[:, :, :hi],
                        values[:, :, :hi],
                        query_positions,
                        limits[rows],
                        group,
                    )
                )
            return parts

        blocks = even_blocks(q0, q0 + t1 - t0, min(blockwise.BLOCK, STRIP_BLOCK))
        return band_attention(bands, t1 - t0, q0, call.scale, blocks, extra_parts=extra_parts)

    def _fractional_keys(self, call: Call, group: int, width: int) -> torch.Tensor:
        """The first ``width`` keys as the fractional part sees them: at j / G, or mixed from ceil and floor."""
        tables = self.per_forward(
            ("keys", call.position, group, width, call.k.device), lambda: self._key_rotations(call, group, width)
        )
        keys = call.k[:, :, :width].float()
        if not self.config.logit_interpolation:
            return apply_rotation(keys, tables).to(call.k.dtype)
        upper, lower, weight = tables
        mixed = apply_rotation(keys, upper).mul_(1 - weight).add_(apply_rotation(keys, lower).mul_(weight))
        return mixed.to(call.k.dtype)

    def _key_rotations(self, call: Call, group: int, width: int):
        """Tables turning keys from j to j / G; with logit interpolation, to ceil(j / G) and floor(j / G)
        and the weight (width, 1) of the floor one."""
        j = call.position + torch.arange(width, device=call.k.device)
        if not self.config.logit_interpolation:
            return rotation(j / group - j, call.inv_freq, call.k.device)
        upper = -(-j // group)
        weight = ((upper * group - j) / group).float()[:, None]
        return (
            rotation(upper - j, call.inv_freq, call.k.device),
            rotation(j // group - j, call.inv_freq, call.k.device),
            weight,
        )

    def _noisy_fractional(
        self,
        call: Call,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
        limits: torch.Tensor,
        group: int,
    ) -> Partial:
        """Softmax part of queries q (at ``query_positions``) over their fractional keys [0, limit), from
        explicit logits plus noise; computed in chunks of queries whose scores hold at most SCORE_BUDGET elements."""
        b, hq, n, d = q.shape
        hkv = keys.shape[1]
        fold = hq // hkv
        key_positions = call.position + torch.arange(keys.shape[2], device=q.device)
        on_fraction = (key_positions % group != 0).float()
        rows = max(1, SCORE_BUDGET // max(1, b * hq * keys.shape[2]))
        outs, lses = [], []
        for r0 in range(0, n, rows):
            chunk = q[:, :, r0 : r0 + rows]
            count = chunk.shape[2]
            logits = (chunk.reshape(b, hkv, fold * count, d).float() @ keys.float().transpose(-1, -2)) * call.scale
            logits = logits.reshape(b, hq, count, -1)
            positions_here = query_positions[r0 : r0 + rows]
            distance = positions_here[:, None] - key_positions[None, :]
            std = self.config.std_base * distance / (positions_here[:, None] + 1)
            noise = standard_normal(self.noise_seed, call.module.layer_idx, hq, positions_here, key_positions)
            logits += noise * (std * on_fraction).float()
            visible = torch.arange(keys.shape[2], device=q.device)[None, :] < limits[r0 : r0 + rows, None]
            logits.masked_fill_(~visible, float("-inf"))
            lse = logits.logsumexp(-1)
            weights = (logits - lse.unsqueeze(-1)).exp_().nan_to_num_(0.0)  # a row with no key: -inf - -inf
            out = weights.reshape(b, hkv, fold * count, -1) @ values.float()
            outs.append(out.reshape(b, hq, count, -1))
            lses.append(lse)
        return Partial(torch.cat(outs, dim=2), torch.cat(lses, dim=2))


register(
    AttentionMethod(
        name="gali",
        config_class=GALIConfig,
        runtime=GALIRuntime,
        summary="GALI: greedy fractional positions for the current length, logits interpolated between integer "
        "distances (plus distance-scaled noise)",
        paper="https://arxiv.org/abs/2502.02659",
    )
)
