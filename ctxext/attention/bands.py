"""Blockwise attention over distance bands, with no (n x n) tensor for the whole sequence.

Every attention-level method is a sum of *bands*: a query (at key index i) sees the keys
j with ``near <= i - j <= far`` inside an index range, through its own rotation of q and
k. For a block of queries [i0, i1) of size B a band splits into at most three kernel
calls: an anti-causal B x B square at its far edge, a fully visible rectangle, and a
causal B x B square at its near edge. Squares cut by the index range get an explicit
B x B mask. The partial results of all bands of a block are merged by log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kernels import Partial, attend, merge

BLOCK = 2048


@dataclass
class Band:
    """Keys ``k[..., t, :]`` (key index ``offset + t``) seen through ``q`` where near <= i - j <= far."""

    q: torch.Tensor  # (b, hq, n, d): the whole query range, rotated for this band
    k: torch.Tensor  # (b, hkv, m, d)
    v: torch.Tensor
    near: int = 0
    far: float = math.inf
    lo: int = 0  # key index range [lo, hi) the band may use
    hi: int | None = None
    offset: int = 0  # key index of k[..., 0, :]


def _regions(i0: int, i1: int, band: Band, hi: int):
    """(start, end, kind) key ranges of a query block: kind 'full', 'causal', 'anti' or a bool mask."""
    lo = max(band.lo, band.offset)
    size = i1 - i0
    if size == 1:
        start, end = max(lo, i0 - band.far), min(hi, i0 - band.near + 1)
        return [(int(start), int(end), "full")] if start < end else []
    if band.far - band.near < size:  # narrow band: one masked rectangle
        start, end = max(lo, i0 - band.far), min(hi, i1 - band.near)
        return [(int(start), int(end), "mask")] if start < end else []
    pieces = []
    if math.isfinite(band.far):
        pieces.append((int(i0 - band.far), int(i1 - band.far), "anti"))
        full_start = int(i1 - band.far)
    else:
        full_start = lo
    pieces.append((full_start, i0 - band.near, "full"))
    pieces.append((i0 - band.near, i1 - band.near, "causal"))
    out = []
    for start, end, kind in pieces:
        clipped_start, clipped_end = max(start, lo), min(end, hi)
        if clipped_start >= clipped_end:
            continue
        if kind != "full" and (clipped_start, clipped_end) != (start, end):
            kind = "mask"
        out.append((clipped_start, clipped_end, kind))
    return out


def _band_block(band: Band, i0: int, i1: int, q0: int, scale: float) -> list[Partial]:
    hi = band.offset + band.k.shape[2] if band.hi is None else min(band.hi, band.offset + band.k.shape[2])
    q = band.q[:, :, i0 - q0 : i1 - q0]
    parts = []
    for start, end, kind in _regions(i0, i1, band, hi):
        k = band.k[:, :, start - band.offset : end - band.offset]
        v = band.v[:, :, start - band.offset : end - band.offset]
        if kind == "full":
            parts.append(attend(q, k, v, scale))
        elif kind == "causal":
            parts.append(attend(q, k, v, scale, causal=True))
        elif kind == "anti":  # u >= t is causal on reversed sequences
            flipped = attend(q.flip(2), k.flip(2), v.flip(2), scale, causal=True)
            parts.append(Partial(flipped.out.flip(2), flipped.lse.flip(2)))
        else:
            i = torch.arange(i0, i1, device=q.device).unsqueeze(1)
            j = torch.arange(start, end, device=q.device).unsqueeze(0)
            mask = (i - j >= band.near) & (i - j <= band.far)
            parts.append(attend(q, k, v, scale, mask=mask))
    return parts


def band_attention(bands_of_block, n: int, q0: int, scale: float, blocks=None, narrowest: float = math.inf,
                   extra_parts=None):
    """Attention output (b, hq, n, d) fp32 for queries at key indexes q0 .. q0 + n - 1.

    ``bands_of_block(i0, i1)`` returns the bands of a query block; ``blocks`` optionally
    gives the block boundaries (methods whose bands change at chunk borders align blocks).
    ``narrowest`` is the smallest far - near of the bands: blocks no wider than it keep
    every band on the fast unmasked kernels. ``extra_parts(i0, i1)``, when given, returns more
    :class:`Partial` results of a block (over keys no band covers), merged with the bands'.
    """
    if blocks is None:
        blocks = even_blocks(q0, q0 + n, int(max(1, min(BLOCK, narrowest))))
    outputs = []
    for i0, i1 in blocks:
        parts = []
        for band in bands_of_block(i0, i1):
            parts.extend(_band_block(band, i0, i1, q0, scale))
        if extra_parts is not None:
            parts.extend(extra_parts(i0, i1))
        outputs.append(merge(parts).out)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def even_blocks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, end)) for i in range(start, end, size)]
