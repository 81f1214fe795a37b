"""Top-k attention: each query keeps only the k keys with the largest logits among a range of keys.

Used as one more part of a blockwise attention (``band_attention(..., extra_parts=...)``):
the result is a :class:`Partial`, merged with the other parts by log-sum-exp. The choice is
made per query head (query heads sharing a key/value head under GQA choose separately).
Scores are computed in fp32 over chunks of queries sized so that one chunk's score matrix
holds at most ``SCORE_BUDGET`` elements: there is never an (n x n) tensor.
"""

from __future__ import annotations

import torch

from .kernels import Partial

SCORE_BUDGET = 1 << 24  # elements of one chunk's (batch x query heads x queries x keys) score matrix


def top_k_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ends: torch.Tensor, top_k: int, scale: float
) -> Partial:
    """Softmax of each query over its ``top_k`` highest-scoring keys, among the first ``ends[t]`` keys.

    q (b, hq, n, d) and k, v (b, hkv, m, d) are already rotated as they should be scored;
    ``ends`` (n,) int64 on their device: query t may use keys 0 .. ends[t] - 1. A query with
    fewer usable keys than ``top_k`` keeps all of them; one with none gets lse = -inf and a
    zero output.
    """
    b, hq, n, _ = q.shape
    rows = max(1, SCORE_BUDGET // max(1, b * hq * k.shape[2]))
    parts = [_chunk(q[:, :, t0 : t0 + rows], k, v, ends[t0 : t0 + rows], top_k, scale) for t0 in range(0, n, rows)]
    if len(parts) == 1:
        return parts[0]
    return Partial(torch.cat([p.out for p in parts], dim=2), torch.cat([p.lse for p in parts], dim=2))


def _chunk(q, k, v, ends, top_k: int, scale: float) -> Partial:
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    used = int(ends.max())
    if used == 0:
        return Partial(
            q.new_zeros(b, hq, n, v.shape[-1], dtype=torch.float32),
            q.new_full((b, hq, n), float("-inf"), dtype=torch.float32),
        )
    k, v = k[:, :, :used], v[:, :, :used]
    folded = q.reshape(b, hkv, group * n, d).float()  # query heads of one kv head along the query axis
    logits = (folded @ k.float().transpose(-1, -2)) * scale
    usable = torch.arange(used, device=q.device)[None, :] < ends[:, None]
    logits = logits.masked_fill(~usable.repeat(group, 1), float("-inf"))
    chosen, index = logits.topk(min(top_k, used), dim=-1)
    values = torch.gather(v, 2, index.reshape(b, hkv, -1, 1).expand(-1, -1, -1, v.shape[-1]))
    values = values.reshape(*index.shape, v.shape[-1]).float()
    lse = chosen.logsumexp(-1)
    weights = (chosen - lse.unsqueeze(-1)).exp().nan_to_num(0.0)  # a row with no usable key: -inf - -inf
    out = (weights.unsqueeze(-2) @ values).squeeze(-2)
    return Partial(out.reshape(b, hq, n, -1), lse.reshape(b, hq, n))
