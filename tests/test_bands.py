"""Blockwise band attention against a dense softmax, and the kernel calls it splits a block into."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ctxext.model.attention import bands
from ctxext.model.attention.bands import Band, band_attention

N = 40  # keys; queries are the last N - Q0 of them
Q0 = 5
# (near, far, lo, hi, offset): wide and narrow bands, cut by the key range at either end
BAND_SHAPES = [
    (0, math.inf, 0, None, 0),
    (0, 11, 0, None, 0),
    (12, math.inf, 0, None, 0),
    (3, 20, 7, 30, 0),
    (0, math.inf, 17, None, 0),
    (0, math.inf, 0, 23, 0),
    (9, 9, 0, None, 0),
    (0, 15, 0, None, 14),
    (25, math.inf, 4, 12, 2),
]


def _visible(band: Band, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    distance = rows[:, None] - keys[None, :]
    lo, hi = band.key_range
    return (distance >= band.near) & (distance <= band.far) & (keys[None, :] >= lo) & (keys[None, :] < hi)


def _dense(band_list: list[Band], n: int, q0: int, scale: float) -> torch.Tensor:
    """Softmax of every query over the union of its bands' visible keys, as one (n x keys) matrix per band."""
    rows = torch.arange(q0, q0 + n)
    logits, values = [], []
    for band in band_list:
        keys = band.offset + torch.arange(band.k.shape[2])
        group = band.q.shape[1] // band.k.shape[1]
        k, v = band.k.repeat_interleave(group, 1), band.v.repeat_interleave(group, 1)
        band_logits = (band.q.double() @ k.double().transpose(-1, -2)) * scale
        logits.append(band_logits.masked_fill(~_visible(band, rows, keys), -math.inf))
        values.append(v.double())
    weights = torch.cat(logits, -1).softmax(-1).nan_to_num(0.0)
    return weights @ torch.cat(values, 2)


def _band(shape, generator, n_queries: int, dim: int = 8) -> Band:
    near, far, lo, hi, offset = shape
    return Band(
        torch.randn(1, 4, n_queries, dim, generator=generator),
        torch.randn(1, 2, N - offset, dim, generator=generator),
        torch.randn(1, 2, N - offset, dim, generator=generator),
        near,
        far,
        lo,
        hi,
        offset,
    )


@pytest.mark.parametrize("block", [1, 4, 7, 64])
@pytest.mark.parametrize("shape", BAND_SHAPES, ids=[str(s) for s in BAND_SHAPES])
def test_one_band_matches_a_dense_softmax(shape, block):
    band = _band(shape, torch.Generator().manual_seed(0), N - Q0)
    blocks = bands.even_blocks(Q0, N, block)
    got = band_attention(lambda i0, i1: [band], N - Q0, Q0, 0.3, blocks)
    torch.testing.assert_close(got.double(), _dense([band], N - Q0, Q0, 0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [3, 8])
def test_bands_with_their_own_rotations_merge_into_one_softmax(block):
    generator = torch.Generator().manual_seed(1)
    band_list = [
        _band(BAND_SHAPES[1], generator, N - Q0),
        _band(BAND_SHAPES[2], generator, N - Q0),
        _band(BAND_SHAPES[8], generator, N - Q0),
    ]
    got = band_attention(lambda i0, i1: band_list, N - Q0, Q0, 0.3, bands.even_blocks(Q0, N, block))
    torch.testing.assert_close(got.double(), _dense(band_list, N - Q0, Q0, 0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", BAND_SHAPES, ids=[str(s) for s in BAND_SHAPES])
def test_regions_cover_each_visible_pair_once_and_mask_only_narrow_bands(shape):
    band = _band(shape, torch.Generator().manual_seed(0), N - Q0)
    for block, i0 in itertools.product([1, 4, 9], range(Q0, N, 3)):
        i1 = min(N, i0 + block)
        covered = torch.zeros(i1 - i0, N, dtype=torch.int64)
        for r0, r1, start, end, kind in bands._regions(i0, i1, band):
            rows, keys = torch.arange(r0, r1), torch.arange(start, end)
            distance = rows[:, None] - keys[None, :]
            seen = {
                "full": torch.ones_like(distance, dtype=torch.bool),
                "causal": distance >= band.near,
                "anti": distance <= band.far,
            }.get(kind, (distance >= band.near) & (distance <= band.far))
            if kind in ("causal", "anti"):
                assert r1 - r0 == end - start, "causal and anti pieces are squares"
            if kind == "mask":
                assert band.far - band.near < r1 - r0, "a mask only for a band narrower than the block"
            covered[r0 - i0 : r1 - i0, start:end] += seen.long()
        expected = _visible(band, torch.arange(i0, i1), torch.arange(N)).long()
        assert torch.equal(covered, expected), (block, i0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", BAND_SHAPES, ids=[str(s) for s in BAND_SHAPES])
def test_cuda_kernels_match_a_dense_softmax(shape, dtype):
    """Flash (unmasked fp16/bf16 pieces), memory-efficient (masks, fp32) kernels on CUDA."""
    band = _band(shape, torch.Generator().manual_seed(0), N - Q0, dim=64)
    on_cuda = Band(
        band.q.to("cuda", dtype),
        band.k.to("cuda", dtype),
        band.v.to("cuda", dtype),
        band.near,
        band.far,
        band.lo,
        band.hi,
        band.offset,
    )
    got = band_attention(lambda i0, i1: [on_cuda], N - Q0, Q0, 0.125, bands.even_blocks(Q0, N, 8))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double().cpu(), _dense([band], N - Q0, Q0, 0.125), atol=tolerance, rtol=tolerance)
