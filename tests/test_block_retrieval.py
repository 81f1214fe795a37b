"""Block retrieval specifics; the shared attention tests run its table case against the formula below.

``retrieval_distances`` is the method's formula written query by query in fp64 (block means,
top-k per key/value head, the contiguous layout [sinks | chosen blocks | local]); the runtime's
attention must match a dense n x n softmax over it, on prefill and decoding-sized calls, with
small and default query blocks and retrieval chunks. Also: the layout is the true one (plain
attention) while every candidate fits, a planted block is retrieved, decoding logits equal
recomputing them, the cache holds un-rotated keys, defaults and errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import ctxext
from ctxext.core.registry import Scaling
from ctxext.errors import CtxextError
from ctxext.methods import block_retrieval
from ctxext.model.attention import bands
from ctxext.model.attention.runtime import Call
from ctxext.model.compat import cache_keyword, returned_cache

from support.attention_reference import retrieval_distances, turn
from support.method_cases import CASES
from support.models import NATIVE, logits, make_model, tokens

PARAMS = CASES["block-retrieval"].params


def dense(q0, k0, v, params: dict, inv_freq, scale: float):
    """fp64 output (b, hq, n, d) of block retrieval over whole rows, an n x n softmax per head."""
    hq, hkv = q0.shape[1], k0.shape[1]
    k0, v = k0.repeat_interleave(hq // hkv, 1).double(), v.repeat_interleave(hq // hkv, 1).double()
    out = []
    for row in range(q0.shape[0]):
        distance, visible = retrieval_distances(q0[row], k0[row], params, hkv)
        n, d = distance.shape[-1], q0.shape[-1]
        angles = distance.double()[..., None] * inv_freq.double()
        rotated = turn(q0[row].double()[:, :, None, :].expand(hq, n, n, d), angles)
        scores = ((rotated * k0[row][:, None]).sum(-1) * scale).masked_fill(~visible, -math.inf)
        out.append(scores.softmax(-1) @ v[row])
    return torch.stack(out)


def runtime(params: dict, length: int = NATIVE):
    config = block_retrieval.BlockRetrievalConfig.from_params("block-retrieval", params)
    return block_retrieval.BlockRetrievalRuntime(config, Scaling(3.0, length, 3 * length, 16))


def attended(params: dict, q, k, v, inv_freq, scale: float):
    call = Call(q=q, k=k, v=v, position=0, scale=scale, inv_freq=inv_freq, module=None, rows=slice(None))
    return runtime(params).attend(call)


def random_row(batch: int, hq: int, hkv: int, m: int, d: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, m, d, generator=generator)
    k, v = torch.randn(batch, hkv, m, d, generator=generator), torch.randn(batch, hkv, m, d, generator=generator)
    return q, k, v


@pytest.fixture(params=[16, bands.BLOCK], ids=["block16", "block-default"])
def block(request, monkeypatch):
    monkeypatch.setattr(bands, "BLOCK", request.param)
    return request.param


@pytest.fixture(params=[200, block_retrieval.PAIR_BUDGET], ids=["chunked-pairs", "default-pairs"])
def pair_budget(request, monkeypatch):
    monkeypatch.setattr(block_retrieval, "PAIR_BUDGET", request.param)
    return request.param


@pytest.mark.parametrize("hq, hkv, rotary", [(4, 2, 8), (3, 3, 4), (6, 1, 8)], ids=["gqa", "mha-partial", "mqa"])
@pytest.mark.parametrize("queries", [None, 1, 7], ids=["prefill", "decode", "decode-7"])
def test_attend_matches_the_dense_fp64_formula(hq, hkv, rotary, queries, block, pair_budget):
    q, k, v = random_row(2, hq, hkv, 90)
    inv_freq = 10000.0 ** (-torch.arange(0, rotary, 2).float() / 16)
    n = queries or 90
    got = attended(PARAMS, q[:, :, -n:], k, v, inv_freq, 0.3)
    want = dense(q, k, v, PARAMS, inv_freq, 0.3)[:, :, -n:]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_the_formula_retrieves_a_planted_block():
    """A middle block whose keys point along the last query is chosen, so the output reads its values."""
    q, k, v = random_row(1, 2, 1, 90, seed=3)
    direction = q[:, :, -1].sum(1)
    k[:, 0, 39:43] = 10 * direction / direction.norm()  # block 9: keys 3 + 9 * 4 .. 3 + 10 * 4 - 1
    v[:, :, 39:43] = 100.0
    inv_freq = torch.full((8,), 1e-4)  # (almost) no rotation: the retrieved keys keep their logits
    _, visible = retrieval_distances(q[0], k[0].repeat(2, 1, 1), PARAMS, 1)
    assert visible[:, -1, 39:43].all() and visible[:, -1].sum(-1).tolist() == [3 + 2 * 4 + 12 + 3] * 2
    assert attended(PARAMS, q, k, v, inv_freq, 1.0)[0, :, -1].mean() > 50


def test_plain_attention_while_every_candidate_fits(block, pair_budget):
    params = dict(PARAMS, top_k=10)  # span 3 + 40 + 12 + 3 = 58: up to 10 candidate blocks, all kept
    q, k, v = random_row(2, 4, 2, 58)
    inv_freq = 10000.0 ** (-torch.arange(0, 16, 2).float() / 16)
    angles = torch.arange(58).float()[:, None] * inv_freq
    want = torch.nn.functional.scaled_dot_product_attention(
        turn(q, angles), turn(k, angles), v, is_causal=True, scale=0.3, enable_gqa=True
    )
    torch.testing.assert_close(attended(params, q, k, v, inv_freq, 0.3), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attended(PARAMS, q, k, v, inv_freq, 0.3), want)  # top_k 2 of 10 blocks


def test_decoding_logits_equal_recomputing_them():
    model = ctxext.extend(make_model("llama"), "block-retrieval", factor=3, **PARAMS)
    ids = tokens(110)
    full = logits(model, ids)
    with torch.no_grad():
        output = model(input_ids=ids[:, :40], use_cache=True)
        cache, steps = returned_cache(output), [output.logits]
        for t in range(40, 110):
            output = model(input_ids=ids[:, t : t + 1], use_cache=True, **{cache_keyword(model): cache})
            cache = returned_cache(output)
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_the_cache_holds_un_rotated_keys():
    ids = tokens(40)
    with torch.no_grad():
        cache = returned_cache(
            ctxext.extend(make_model("llama"), "block-retrieval", factor=3, **PARAMS)(input_ids=ids, use_cache=True)
        )
        plain = returned_cache(make_model("llama")(input_ids=ids, position_ids=torch.zeros(1, 40), use_cache=True))
    torch.testing.assert_close(cache.layers[0].keys, plain.layers[0].keys, atol=0, rtol=0)


def test_defaults_come_from_the_original_length():
    smollm2 = runtime({}, length=8192)
    assert (smollm2.n_sink, smollm2.window, smollm2.block, smollm2.top_k) == (128, 4096, 64, 8)
    tiny = ctxext.extend(make_model("llama"), "block-retrieval", factor=4)
    assert tiny.config.ctxext["params"] == {
        "n_sink": None,
        "window": None,
        "block_size": None,
        "top_k": 8,
        "log_scaling": False,
    }


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(window=60), r"n_sink \+ top_k \* block_size \+ window \+ block_size - 1 \(69\) must not exceed"),
        (dict(top_k=0), "top_k must be at least 1"),
        (dict(block_size=0), "block_size must be at least 1"),
        (dict(n_sink=-1), "n_sink must be at least 0"),
        (dict(window=2.5), "whole number"),
    ],
)
def test_bad_parameters_get_clear_errors(params, message):
    model = make_model("llama")
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(model, "block-retrieval", factor=2, **params)
    assert not ctxext.is_extended(model) and model.config._attn_implementation == "sdpa"
