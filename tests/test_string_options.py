"""STRING's two reference options: S from the target length, and the reference's cos/sin factor."""

from __future__ import annotations

import pytest
import torch

import ctxext
from ctxext.errors import CtxextError

from support.attention import dense_reference, extend_tiny
from support.models import NATIVE, logits, make_model, tokens, yarn_checkpoint


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_reference_scale_matches_the_dense_reference(family, block):
    ids = tokens(150, batch=2)
    params = dict(shifted_offset=21, local_value=5, reference_scale=True)
    got = logits(extend_tiny(family, "string", params), ids)
    torch.testing.assert_close(got, logits(dense_reference(family, "string", params), ids), atol=2e-4, rtol=1e-4)
    assert not torch.allclose(got, logits(extend_tiny(family, "string", {**params, "reference_scale": False}), ids))


def test_shifted_fraction_sets_s_from_the_target_length(block):
    ids = tokens(150, batch=2)
    factor = 3  # target length 192: S = round(0.25 * 192) = 48
    by_fraction = ctxext.extend(make_model("llama"), "string", factor=factor, shifted_fraction=0.25, local_value=5)
    assert by_fraction._ctxext_state.shift == 48
    want = logits(dense_reference("llama", "string", dict(shifted_offset=48, local_value=5)), ids)
    torch.testing.assert_close(logits(by_fraction, ids), want, atol=2e-4, rtol=1e-4)


def test_shifted_fraction_keeps_cached_decoding_equal_to_recomputation():
    model = ctxext.extend(make_model("llama"), "string", factor=3, shifted_fraction=0.3, local_value=5)
    prompt = tokens(NATIVE + 20)
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)
    sequence = prompt
    for _ in range(12):
        sequence = torch.cat([sequence, logits(model, sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize(
    "params,message",
    [
        (dict(shifted_fraction=0.3, shifted_offset=20), "not both"),
        (dict(shifted_fraction=1.5), "between 0 and 1"),
        (dict(shifted_fraction=0), "between 0 and 1"),
        (dict(reference_scale="yes"), "true or false"),
        (dict(reference_scale=True, log_scaling=True), "stack two temperatures"),
    ],
)
def test_bad_string_options_are_refused(params, message):
    model = make_model("llama")
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(model, "string", factor=2, **params)
    assert not ctxext.is_extended(model)


def test_reference_scale_never_stacks_on_the_rope_attention_factor():
    model = yarn_checkpoint()
    with pytest.raises(CtxextError, match="STRING's reference_scale would stack"):
        ctxext.extend(model, "string", factor=2, reference_scale=True)
    assert not ctxext.is_extended(model) and model.config._attn_implementation == "sdpa"
