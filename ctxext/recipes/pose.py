"""PoSE position ids: a short training window whose positions jump across the target length.

PoSE (Zhu et al., 2023, arXiv:2309.10400) trains on windows of ``seq_len`` tokens but gives
them position ids spread over the target length: the window is cut into chunks and every
chunk after the first is shifted by a skip ``u_i``, drawn uniformly from ``[u_{i-1},
target - seq_len]`` (so skips never decrease and the last position stays below the target).
The first chunk starts at position 0. Chunk lengths are a random split of the window.
"""

from __future__ import annotations

import torch

from ..errors import CtxextError


def pose_position_ids(
    seq_len: int, target_length: int, chunks: int = 2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Position ids (1-D, int64) for one window: strictly increasing, from 0, all below ``target_length``."""
    if seq_len < 1 or chunks < 1:
        raise CtxextError(f"seq_len and chunks must be positive, got {seq_len} and {chunks}")
    if seq_len > target_length:
        raise CtxextError(f"seq_len {seq_len} is above the target length {target_length}")
    chunks = min(chunks, seq_len)
    cuts = torch.randperm(seq_len - 1, generator=generator)[: chunks - 1] + 1
    bounds = [0, *sorted(cuts.tolist()), seq_len]
    room = target_length - seq_len
    positions = torch.arange(seq_len)
    skip = 0
    for start, end in zip(bounds[1:-1], bounds[2:]):
        skip = int(torch.randint(skip, room + 1, (1,), generator=generator))
        positions[start:end] += skip
    return positions
