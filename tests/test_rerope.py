"""ReRoPE specifics; the shared attention tests cover its table case (leaky ReRoPE) already.

Plain ReRoPE (no ``leaky``) against the dense reference, its KV cache under generate(), its
defaults and its cache layout (keys cached un-rotated, or at j / k when leaky).
"""

from __future__ import annotations

import pytest
import torch

import ctxext
from ctxext.model.compat import returned_cache

from support import attention_reference
from support.models import NATIVE, logits, make_model, tokens

PLAIN = dict(window=12)


def _extended(family: str, params: dict):
    return ctxext.extend(make_model(family), "rerope", factor=3, **params)


def _reference(family: str, params: dict):
    model = make_model(family)
    attention_reference.install(model, "rerope", params)
    return model


@pytest.mark.parametrize(
    "params",
    [PLAIN, dict(window=1), dict(window=12, leaky=16.0), dict(PLAIN, log_scaling=False)],
    ids=["plain", "window1", "leaky16", "plain-no-log"],
)
@pytest.mark.parametrize("family", ["llama", "gpt_neox", "phi3"])
@pytest.mark.parametrize("length", [37, 150])
def test_matches_dense_reference(params, family, length, block):
    if params.get("window") == 1 and (family != "llama" or block != 16):
        pytest.skip("window 1 runs one query per block: once is enough")
    ids = tokens(length, batch=2)
    torch.testing.assert_close(
        logits(_extended(family, params), ids), logits(_reference(family, params), ids), atol=2e-4, rtol=1e-4
    )


def test_plain_cached_generate_equals_recomputing_the_prefix():
    model = _extended("llama", PLAIN)
    prompt = tokens(NATIVE - 8)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)
    sequence = prompt
    for _ in range(20):
        following = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, following], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("leaky", [None, 4.0])
def test_the_cache_holds_keys_at_position_j_over_k(leaky):
    """Plain: keys un-rotated (position 0); leaky: at j / k. Checked against the unpatched model fed those positions."""
    ids = tokens(40)
    params = dict(PLAIN) if leaky is None else dict(PLAIN, leaky=leaky)
    with torch.no_grad():
        cache = returned_cache(_extended("llama", params)(input_ids=ids, use_cache=True))
        positions = torch.zeros(1, 40) if leaky is None else torch.arange(40.0)[None] / leaky
        plain = returned_cache(make_model("llama")(input_ids=ids, position_ids=positions, use_cache=True))
    torch.testing.assert_close(cache.layers[0].keys, plain.layers[0].keys, atol=0, rtol=0)


def test_defaults_come_from_the_original_length():
    model = ctxext.extend(make_model("llama"), "rerope", factor=4)
    assert model.config.ctxext["params"] == {"window": None, "leaky": None, "log_scaling": True}
    runtime = model.__dict__["_ctxext_state"]
    assert (runtime.window, runtime.leaky) == (NATIVE // 4, None)
