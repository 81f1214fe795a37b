"""extend() / restore() on tiny models of every family: identity, exact restore, real scaling."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import ctxext
from ctxext import CtxextError
from ctxext.methods.ntk import ntk_theta

from support.method_cases import CASES, ROPE_METHODS
from support.models import NATIVE, logits, make_model, tokens, unsupported

DYNAMIC = [name for name in ROPE_METHODS if ctxext.get_method(name).dynamic]
STATIC = [name for name in ROPE_METHODS if name not in DYNAMIC]


def _rotary(model):
    return [m for m in model.modules() if hasattr(m, "rope_type") and hasattr(m, "config")][0]


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_factor_one_is_identity(method, family, monkeypatch):
    if unsupported(family, method):
        with pytest.raises(CtxextError):
            ctxext.extend(make_model(family), method, factor=2, **CASES[method].params)
        return
    model = make_model(family)
    ids = tokens(NATIVE if method in DYNAMIC else 2 * NATIVE)  # dynamic methods scale beyond L whatever the factor
    before = logits(model, ids)
    # The public API refuses factor 1; force it through the whole pipeline to prove the no-op.
    monkeypatch.setattr("ctxext.core.plan.resolve_lengths", lambda native, *a: (1.0, native, native))
    ctxext.extend(model, method, factor=2, **CASES[method].identity_params)
    if CASES[method].blends_frequencies:  # inv*(1-r) + inv*r rounds to within one fp32 ulp of inv
        torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(logits(model, ids), before)


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_restore_is_exact(method, family):
    case = CASES[method]
    if unsupported(family, method):
        with pytest.raises(CtxextError):
            ctxext.extend(make_model(family), method, factor=2, **case.params)
        return
    model = make_model(family)
    ids = tokens(3 * NATIVE)
    before = logits(model, ids)
    config_before = model.config.to_dict()
    ctxext.extend(model, method, factor=case.factor, **case.params)
    assert not torch.equal(logits(model, ids), before)
    ctxext.restore(model)
    assert torch.equal(logits(model, ids), before)
    assert model.config.to_dict() == config_before
    assert not ctxext.is_extended(model)


@pytest.mark.parametrize("method", STATIC)
def test_static_methods_change_short_inputs_too(method):
    # Static methods rescale every position (longrope: its temperature applies at all lengths).
    model = make_model("llama")
    ids = tokens(NATIVE // 2)
    before = logits(model, ids)
    ctxext.extend(model, method, factor=2, **CASES[method].params)
    assert not torch.equal(logits(model, ids), before)


@pytest.mark.parametrize("method", DYNAMIC)
def test_dynamic_methods_leave_native_lengths_alone_and_scale_beyond(method):
    model = make_model("llama")
    reference = make_model("llama")
    short, long = tokens(NATIVE), tokens(3 * NATIVE)
    factor = CASES[method].factor
    ctxext.extend(model, method, factor=factor)  # default parameters: the expected values below assume them
    assert model.config.max_position_embeddings == NATIVE  # the threshold transformers reads
    assert model.config.ctxext["target_length"] == factor * NATIVE
    assert torch.equal(logits(model, short), logits(reference, short))
    assert not torch.equal(logits(model, long), logits(reference, long))
    rotary = _rotary(model)
    if method == "dynamic-ntk":
        dim = 16
        expected = 1.0 / ntk_theta(10000.0, dim, 3.0) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        torch.testing.assert_close(rotary.inv_freq, expected.float(), rtol=1e-6, atol=0)
    else:
        assert rotary.attention_scaling == pytest.approx(0.1 * math.log(3.0) + 1)
    # a short input after a long one is back to the unpatched model, temperature included
    assert torch.equal(logits(model, short), logits(reference, short))


def test_gemma3_extends_only_full_attention_by_default():
    model = make_model("gemma3_text")
    rotary = _rotary(model)
    sliding, full = rotary.sliding_attention_inv_freq.clone(), rotary.full_attention_inv_freq.clone()
    ctxext.extend(model, "pi", factor=4)
    rotary = _rotary(model)
    assert torch.equal(rotary.sliding_attention_inv_freq, sliding)
    torch.testing.assert_close(rotary.full_attention_inv_freq, full / 4)
    assert model.config.rope_parameters["sliding_attention"]["rope_type"] == "default"
    ctxext.extend(model, "pi", factor=4, replace=True, rope_layer_types=["sliding_attention", "full_attention"])
    torch.testing.assert_close(_rotary(model).sliding_attention_inv_freq, sliding / 4)


@pytest.mark.parametrize("method", STATIC)
def test_generate_with_cache_equals_recomputing(method):
    model = make_model("llama")
    ctxext.extend(model, method, factor=CASES[method].factor, **CASES[method].params)
    prompt = tokens(NATIVE - 6)
    generated = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    sequence = prompt
    for _ in range(16):  # crosses the native length
        next_token = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("method", ["yarn", "pi"])
def test_left_padded_batch_rows_equal_rows_alone(method):
    model = make_model("qwen2")
    ctxext.extend(model, method, factor=4)
    long_row, short_row = tokens(2 * NATIVE, seed=3)[0], tokens(NATIVE + 10, seed=4)[0]
    pad = long_row.numel() - short_row.numel()
    input_ids = torch.stack([long_row, torch.cat([torch.zeros(pad, dtype=torch.long), short_row])])
    mask = torch.ones_like(input_ids)
    mask[1, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits(model, input_ids, attention_mask=mask, position_ids=position_ids)
    alone_long = logits(model, long_row[None])
    alone_short = logits(model, short_row[None])
    torch.testing.assert_close(batched[0], alone_long[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1, pad:], alone_short[0], rtol=1e-4, atol=1e-5)


def test_bf16_model_runs_extended():
    model = make_model("llama", dtype=torch.bfloat16)
    ctxext.extend(model, "yarn", factor=4)
    assert _rotary(model).inv_freq.dtype == torch.float32
    out = logits(model, tokens(3 * NATIVE))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---- bad input ---------------------------------------------------------------------------


def test_non_rope_model_is_refused():
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(CtxextError, match="'gpt2' has no rotary"):
        ctxext.extend(model, "yarn", factor=2)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        CtxextError, match=r"unknown method 'rope-magic' \(valid: block-retrieval, dca, dynamic-ntk, .*yarn\)"
    ):
        ctxext.extend(make_model(), "rope-magic", factor=2)


@pytest.mark.parametrize("factor", [1, 1.0, 0.5, -2, float("nan"), float("inf"), "2"])
def test_bad_factor(factor):
    model = make_model()
    with pytest.raises(CtxextError, match="factor"):
        ctxext.extend(model, "yarn", factor=factor)
    assert not ctxext.is_extended(model)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_length": NATIVE}, "above the original length"),
        ({"target_length": NATIVE // 2}, "above the original length"),
        ({"factor": 2, "target_length": 4 * NATIVE}, "exactly one"),
        ({}, "exactly one"),
        ({"factor": 2, "beta_fast": 0.5}, "beta_slow < beta_fast"),
        ({"factor": 2, "bogus": 1}, r"no parameter bogus \(valid: attention_factor, beta_fast, beta_slow\)"),
        ({"factor": 2, "original_length": 0}, "original length"),
    ],
)
def test_bad_lengths_and_parameters(kwargs, match):
    with pytest.raises(CtxextError, match=match):
        ctxext.extend(make_model(), "yarn", **kwargs)


def test_target_length_sets_the_factor():
    model = ctxext.extend(make_model(), "yarn", target_length=3 * NATIVE)
    assert model.config.ctxext["factor"] == 3.0
    assert model.config.max_position_embeddings == 3 * NATIVE


def test_double_patch_is_refused_unless_replaced():
    model = make_model()
    ids = tokens(2 * NATIVE)
    ctxext.extend(model, "pi", factor=2)
    with pytest.raises(CtxextError, match="already extended with 'pi'"):
        ctxext.extend(model, "yarn", factor=2)
    ctxext.extend(model, "yarn", factor=4, replace=True)
    fresh = ctxext.extend(make_model(), "yarn", factor=4)
    assert torch.equal(logits(model, ids), logits(fresh, ids))
    ctxext.restore(model)
    assert torch.equal(logits(model, ids), logits(make_model(), ids))


def test_native_rope_scaling_is_not_dropped_silently():
    model = make_model()
    ctxext.extend(model, "llama3", factor=2)
    native = AutoModelForCausalLM.from_config(
        model.config.__class__(**{**{k: v for k, v in model.config.to_dict().items() if k != "ctxext"}})
    )
    with pytest.raises(CtxextError, match="already uses 'llama3' rope scaling"):
        ctxext.extend(native, "yarn", factor=2)
    ctxext.extend(native, "yarn", factor=2, replace=True)
    assert native.config.rope_parameters["rope_type"] == "yarn"


def test_restore_of_unextended_model_is_refused():
    with pytest.raises(CtxextError, match="not extended"):
        ctxext.restore(make_model())


def test_phi3_takes_only_longrope_and_ntk():
    with pytest.raises(CtxextError, match=r"phi3 config refuses this patch: .*one of \['longrope'\], got yarn"):
        ctxext.extend(make_model("phi3"), "yarn", factor=2)


def test_dynamic_yarn_refuses_per_layer_type_configs():
    with pytest.raises(CtxextError, match="per-layer-type"):
        ctxext.extend(make_model("gemma3_text"), "dynamic-yarn", factor=2)


def test_longrope_factor_lists_are_checked():
    with pytest.raises(CtxextError, match="needs long_factor"):
        ctxext.extend(make_model(), "longrope", factor=2)
    with pytest.raises(CtxextError, match=r"needs 8 numbers"):
        ctxext.extend(make_model(), "longrope", factor=2, long_factor=[1.0, 2.0])
