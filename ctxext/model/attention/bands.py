"""Blockwise attention over distance bands, with no (n x n) tensor for the whole sequence.

Every attention-level method is a sum of *bands*: a query (at key index i) sees the keys
j with ``near <= i - j <= far`` inside an index range, through its own rotation of q and
k. For a block of queries [i0, i1) of size B a band splits into at most three kernel
calls: an anti-causal B x B square at its far edge, a fully visible rectangle, and a
causal B x B square at its near edge. Where the index range cuts a square, its rows are
split so that every piece is again a square or a rectangle: no mask is needed unless a
band is narrower than the block. The partial results of all bands of a block, each over
a range of its rows, are merged by log-sum-exp.
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

    @property
    def key_range(self) -> tuple[int, int]:
        """[lo, hi): the key indexes the band uses, clipped to those its ``k`` holds."""
        end = self.offset + self.k.shape[2]
        return max(self.lo, self.offset), end if self.hi is None else min(self.hi, end)


def _regions(i0: int, i1: int, band: Band):
    """The kernel calls of a query block: (row start, row end, key start, key end, kind) with kind
    'full', 'causal' (row r sees keys up to r - near), 'anti' (row r sees keys from r - far) or
    'mask' (a band narrower than the block).

    Row r sees keys [max(lo, r - far), min(hi, r - near + 1)); each bound is either constant or
    follows the diagonal, so the rows are cut where a bound changes form, and rows that see
    no key are left out. Edges cut by the key range thus stay on unmasked kernels.
    """
    lo, hi = band.key_range
    cuts = {i0, i1}
    if math.isfinite(band.far):
        cuts.add(int(lo + band.far))
    cuts.add(hi + band.near)  # row hi + near - 1 is the last that the diagonal form still serves
    rows = sorted(c for c in cuts if i0 <= c <= i1)
    out = []
    for r0, r1 in zip(rows, rows[1:]):
        lower_fixed = not math.isfinite(band.far) or r0 < lo + band.far
        upper_fixed = r0 >= hi + band.near
        if r1 - r0 == 1:
            start = lo if lower_fixed else int(r0 - band.far)
            end = hi if upper_fixed else r0 - band.near + 1
            pieces = [(r0, r1, start, end, "full")]
        elif lower_fixed and upper_fixed:
            pieces = [(r0, r1, lo, hi, "full")]
        elif lower_fixed:
            r0 = max(r0, lo + band.near)  # rows before it see no key yet
            pieces = [(r0, r1, lo, r0 - band.near, "full"), (r0, r1, r0 - band.near, r1 - band.near, "causal")]
        elif upper_fixed:
            far = int(band.far)
            r1 = min(r1, hi + far)  # rows from it on see no key any more
            pieces = [(r0, r1, r0 - far, r1 - far, "anti"), (r0, r1, r1 - far, hi, "full")]
        elif r1 - r0 > band.far - band.near:
            pieces = [(r0, r1, int(r0 - band.far), r1 - band.near, "mask")]
        else:
            far = int(band.far)
            pieces = [
                (r0, r1, r0 - far, r1 - far, "anti"),
                (r0, r1, r1 - far, r0 - band.near, "full"),
                (r0, r1, r0 - band.near, r1 - band.near, "causal"),
            ]
        out.extend(piece for piece in pieces if piece[0] < piece[1] and piece[2] < piece[3])
    return out


def _band_block(band: Band, i0: int, i1: int, q0: int, scale: float) -> list[tuple[int, int, Partial]]:
    """The band's partial results for the query block, each over a range of its rows."""
    parts = []
    for r0, r1, start, end, kind in _regions(i0, i1, band):
        q = band.q[:, :, r0 - q0 : r1 - q0]
        k = band.k[:, :, start - band.offset : end - band.offset]
        v = band.v[:, :, start - band.offset : end - band.offset]
        if kind == "full":
            part = attend(q, k, v, scale)
        elif kind == "causal":
            part = attend(q, k, v, scale, causal=True)
        elif kind == "anti":  # u >= t is causal on reversed sequences
            flipped = attend(q.flip(2), k.flip(2), v.flip(2), scale, causal=True)
            part = Partial(flipped.out.flip(2), flipped.lse.flip(2))
        else:
            i = torch.arange(r0, r1, device=q.device).unsqueeze(1)
            j = torch.arange(start, end, device=q.device).unsqueeze(0)
            part = attend(q, k, v, scale, mask=(i - j >= band.near) & (i - j <= band.far))
        parts.append((r0, r1, part))
    return parts


def _merge_rows(parts: list[tuple[int, int, Partial]], i0: int, i1: int, like: Band) -> torch.Tensor:
    """Output (b, h, i1 - i0, d) of the block: the parts merged row range by row range."""
    cuts = sorted({i0, i1} | {row for r0, r1, _ in parts for row in (r0, r1)})
    pieces = []
    for a, b in zip(cuts, cuts[1:]):
        covering = [
            Partial(p.out[:, :, a - r0 : b - r0], p.lse[:, :, a - r0 : b - r0])
            for r0, r1, p in parts
            if r0 <= a and b <= r1
        ]
        if covering:
            pieces.append(merge(covering).out)
        else:  # rows that see no key
            pieces.append(like.q.new_zeros(*like.q.shape[:2], b - a, like.v.shape[-1], dtype=torch.float32))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def band_attention(
    bands_of_block, n: int, q0: int, scale: float, blocks=None, narrowest: float = math.inf, extra_parts=None
):
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
        bands = bands_of_block(i0, i1)
        parts = [part for band in bands for part in _band_block(band, i0, i1, q0, scale)]
        if extra_parts is not None:
            parts.extend((i0, i1, part) for part in extra_parts(i0, i1))
        outputs.append(_merge_rows(parts, i0, i1, bands[0]))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def even_blocks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, end)) for i in range(start, end, size)]
