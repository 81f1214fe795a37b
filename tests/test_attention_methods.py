"""Attention-level methods (kind "attention" in ``support/method_cases.py``) on tiny models.

Every method is checked against a dense O(n^2) reference of its formula
(``support/attention_reference.py``), for MHA and GQA, full and partial rotary, batch > 1, lengths
inside and beyond the native length (64), with blocks small enough that every code path of
the blockwise kernels runs; plus identity, padding, KV cache and save/reload, and the shared
``log_scaling`` option (log-n scaling) on top of every method.
"""

from __future__ import annotations

import pytest
import torch

import ctxext
from ctxext.errors import CtxextError
from ctxext.methods import ms_poe
from ctxext.methods.ms_poe import RANKINGS, RATIO_LADDERS
from ctxext.model.attention import topk
from ctxext.model.attention.runtime import RUNTIME_ATTRIBUTE

from support import attention_reference
from support.attention import dense_reference, extend_tiny
from support.method_cases import ATTENTION_METHODS, CASES
from support.models import NATIVE, logits, make_model, tokens, yarn_checkpoint


@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt_neox", "phi3"])
@pytest.mark.parametrize("length", [37, 150])
def test_matches_dense_reference(method, family, length, block):
    ids = tokens(length, batch=2)
    got = logits(extend_tiny(family, method), ids)
    want = logits(dense_reference(family, method), ids)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_identity_when_the_method_cannot_act(method, block):
    case = CASES[method]
    ids = tokens(case.identity_length, batch=2)
    want = logits(make_model("llama"), ids)
    got = logits(extend_tiny("llama", method, case.identity_params), ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _left_padded(lengths: list[int]):
    longest = max(lengths)
    rows = [tokens(n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = row
        mask[i, longest - len(row) :] = 1
    return rows, ids, mask


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_left_padded_rows_equal_rows_run_alone(method, block):
    rows, ids, mask = _left_padded([150, 101, 37])
    model = extend_tiny("llama", method)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits(model, ids, attention_mask=mask, position_ids=positions)
    for i, row in enumerate(rows):
        alone = logits(model, row[None])
        torch.testing.assert_close(batched[i, -len(row) :], alone[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_cached_generate_equals_recomputing_the_prefix(method):
    model = extend_tiny("llama", method)
    prompt = tokens(NATIVE - 8)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)
    sequence = prompt
    for _ in range(20):
        following = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, following], dim=1)
    assert sequence.shape[1] > NATIVE
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_padded_batch_generate_equals_rows_generated_alone(method):
    rows, ids, mask = _left_padded([60, 45])
    model = extend_tiny("llama", method)
    batched = model.generate(
        ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
    )
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(batched[i, ids.shape[1] :], alone[0, len(row) :])


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_save_and_reload_give_the_same_logits(method, tmp_path):
    model = extend_tiny("llama", method, CASES[method].roundtrip_params)
    ids = tokens(150)
    before = logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = ctxext.from_pretrained(tmp_path)
    assert reloaded.config.ctxext["method"] == method
    assert reloaded.config.ctxext["params"] == model.config.ctxext["params"]
    torch.testing.assert_close(logits(reloaded, ids), before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_restore_gives_back_the_unpatched_model(method):
    ids = tokens(150)
    model = make_model("llama")
    want = logits(model, ids)
    ctxext.extend(model, method, factor=CASES[method].factor, **CASES[method].params)
    assert not torch.allclose(logits(model, ids), want)
    ctxext.restore(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(logits(model, ids), want)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_bfloat16_stays_close_to_float32(method):
    ids = tokens(150)
    full = logits(extend_tiny("llama", method), ids)
    half = logits(extend_tiny("llama", method, dtype=torch.bfloat16), ids)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.1


MS_POE_VARIANTS = [dict(ranking=ranking, ratio_ladder=ladder) for ranking in RANKINGS for ladder in RATIO_LADDERS]
MS_POE_IDS = [f"{v['ranking']}-{v['ratio_ladder']}" for v in MS_POE_VARIANTS]


def _ms_poe(variant: dict) -> dict:
    return {**CASES["ms-poe"].params, **variant}


def _sharpened(model):
    """``model`` with its query and key projections 10x: random tiny models attend almost
    uniformly, so every head would score 0 and the ranking would be a tie that decides nothing."""
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "query_key_value")):
            module.weight.data *= 10
    return model


def _sharp_ms_poe(variant: dict, family: str = "llama"):
    return ctxext.extend(_sharpened(make_model(family)), "ms-poe", factor=CASES["ms-poe"].factor, **_ms_poe(variant))


def test_ms_poe_ranks_heads_again_for_every_new_prompt():
    model = _sharp_ms_poe({})
    first, second = tokens(90, seed=3), tokens(120, seed=4)
    logits(model, first)
    after_other_prompt = logits(model, second)
    fresh = logits(_sharp_ms_poe({}), second)
    assert torch.equal(after_other_prompt, fresh)


LAMBDA = dict(n_global=3, window=16)  # LM-Infinite's plain Lambda mask on the tiny models


@pytest.fixture(params=[64, topk.SCORE_BUDGET], ids=["chunked-scores", "default-scores"])
def score_budget(request, monkeypatch):
    monkeypatch.setattr(topk, "SCORE_BUDGET", request.param)
    return request.param


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("from_layer", [0, 1])
def test_lm_infinite_top_k_matches_dense_reference(family, from_layer, block, score_budget):
    ids = tokens(150, batch=2)
    params = {**LAMBDA, "top_k": 3, "top_k_from_layer": from_layer, "top_k_distance": 40}
    got = logits(extend_tiny(family, "lm-infinite", params), ids)
    torch.testing.assert_close(got, logits(dense_reference(family, "lm-infinite", params), ids), atol=2e-4, rtol=1e-4)
    assert not torch.allclose(got, logits(extend_tiny(family, "lm-infinite", LAMBDA), ids))


def test_lm_infinite_top_k_keeps_every_middle_token_when_k_exceeds_them(block, score_budget):
    ids = tokens(150, batch=2)
    params = {**LAMBDA, "top_k": 200, "top_k_from_layer": 0}
    got = logits(extend_tiny("llama", "lm-infinite", params), ids)
    torch.testing.assert_close(got, logits(dense_reference("llama", "lm-infinite", params), ids), atol=2e-4, rtol=1e-4)


def test_lm_infinite_top_k_acts_only_from_its_layer():
    ids = tokens(150, batch=2)
    plain = logits(extend_tiny("llama", "lm-infinite", LAMBDA), ids)
    above_every_layer = logits(extend_tiny("llama", "lm-infinite", {**LAMBDA, "top_k": 3, "top_k_from_layer": 2}), ids)
    assert torch.equal(above_every_layer, plain)


def test_lm_infinite_without_top_k_is_the_plain_lambda_mask(block):
    ids = tokens(150, batch=2)
    plain = logits(extend_tiny("llama", "lm-infinite", LAMBDA), ids)
    off_params = {**LAMBDA, "top_k": 0, "top_k_from_layer": 0, "top_k_distance": 5}
    off = logits(extend_tiny("llama", "lm-infinite", off_params), ids)
    assert torch.equal(off, plain)
    torch.testing.assert_close(
        plain, logits(dense_reference("llama", "lm-infinite", LAMBDA), ids), atol=2e-4, rtol=1e-4
    )


def test_top_k_attention_equals_a_softmax_over_the_chosen_keys(score_budget):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=generator)  # 4 query heads on 2 key/value heads
    k, v = torch.randn(2, 2, 9, 8, generator=generator), torch.randn(2, 2, 9, 8, generator=generator)
    ends = torch.tensor([0, 1, 2, 5, 9, 9])  # query 0 has no usable key, queries 1 and 2 fewer than 3
    got = topk.top_k_attention(q, k, v, ends, 3, 0.5)
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k.repeat_interleave(2, 1)) * 0.5
    scores = scores.masked_fill(torch.arange(9)[None, :] >= ends[:, None], float("-inf"))
    kept = scores >= scores.topk(3, dim=-1).values[..., -1:]
    scores = scores.masked_fill(~kept, float("-inf"))
    torch.testing.assert_close(got.lse, scores.logsumexp(-1))
    torch.testing.assert_close(got.out, scores.softmax(-1).nan_to_num(0.0) @ v.repeat_interleave(2, 1))
    assert torch.equal(got.lse[:, :, 0], torch.full((2, 4), float("-inf"))) and not got.out[:, :, 0].any()


def test_ms_poe_defaults_are_the_reference_codes():
    config = ctxext.get_method("ms-poe").config_class()
    assert (config.ranking, config.ratio_ladder) == ("pre_rope", "reference")


@pytest.mark.parametrize("variant", MS_POE_VARIANTS, ids=MS_POE_IDS)
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_ms_poe_rankings_and_ladders_match_dense_reference(variant, family, block):
    ids = tokens(150, batch=2)
    got = logits(_sharp_ms_poe(variant, family), ids)
    want = logits(dense_reference(family, "ms-poe", _ms_poe(variant), model=_sharpened(make_model(family))), ids)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def _ranked_ratios(variant: dict, ids) -> torch.Tensor:
    """The (batch, kv heads) ratios of layer 1 after the prompt ``ids``."""
    model = _sharp_ms_poe(variant)
    logits(model, ids)
    return model.model.layers[1].self_attn.__dict__[RUNTIME_ATTRIBUTE].ratios[1]


def test_ms_poe_ranking_and_ladder_each_change_the_ratios():
    ids = tokens(150, batch=2)
    pre = _ranked_ratios(dict(ranking="pre_rope", ratio_ladder="inclusive"), ids)
    post = _ranked_ratios(dict(ranking="post_rope", ratio_ladder="inclusive"), ids)
    reference_ladder = _ranked_ratios(dict(ranking="pre_rope", ratio_ladder="reference"), ids)
    assert not torch.equal(pre, post)
    torch.testing.assert_close(pre.sort(-1).values, torch.tensor([[1.2, 1.8]] * 2))
    torch.testing.assert_close(reference_ladder.sort(-1).values, torch.tensor([[1.2, 1.5]] * 2))


@pytest.mark.parametrize("variant", MS_POE_VARIANTS, ids=MS_POE_IDS)
def test_ms_poe_left_padded_rows_equal_rows_run_alone(variant, block):
    rows, ids, mask = _left_padded([150, 101, 37])
    model = _sharp_ms_poe(variant)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits(model, ids, attention_mask=mask, position_ids=positions)
    for i, row in enumerate(rows):
        torch.testing.assert_close(batched[i, -len(row) :], logits(model, row[None])[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", MS_POE_VARIANTS, ids=MS_POE_IDS)
def test_ms_poe_cached_generate_equals_recomputing_with_the_prompts_ranks(variant, monkeypatch):
    model = _sharp_ms_poe(variant)
    prompt = tokens(NATIVE - 8)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)
    ratios = model.model.layers[1].self_attn.__dict__[RUNTIME_ATTRIBUTE].ratios
    assert list(ratios) == [1]  # start_layer 1 of 2 layers
    prompt_ratios = ratios[1].clone()
    # each recomputation would rank on its own last row; decoding keeps the prompt's ranks
    monkeypatch.setattr(ms_poe, "ratios_by_rank", lambda scores, heads, ladder: prompt_ratios)
    sequence = prompt
    for _ in range(20):
        following = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, following], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("variant", MS_POE_VARIANTS, ids=MS_POE_IDS)
def test_ms_poe_padded_batch_generate_equals_rows_generated_alone(variant):
    rows, ids, mask = _left_padded([60, 45])
    model = _sharp_ms_poe(variant)
    batched = model.generate(
        ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
    )
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(batched[i, ids.shape[1] :], alone[0, len(row) :])


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(ranking="after_rope"), "parameter ranking must be one of pre_rope, post_rope, got 'after_rope'"),
        (dict(ratio_ladder="linspace"), "parameter ratio_ladder must be one of reference, inclusive, got 'linspace'"),
        (dict(ranking=1.0), "parameter ranking must be one of pre_rope, post_rope, got 1.0"),
    ],
)
def test_ms_poe_refuses_unknown_choices_in_one_line(params, message):
    model = make_model("llama")
    with pytest.raises(CtxextError) as error:
        ctxext.extend(model, "ms-poe", factor=2, **params)
    assert str(error.value) == message
    assert not ctxext.is_extended(model)


def test_the_checkpoint_rope_scaling_is_kept():
    model, reference_model = yarn_checkpoint(), yarn_checkpoint()
    assert model.model.rotary_emb.attention_scaling > 1
    ctxext.extend(model, "string", factor=1, **CASES["string"].params)
    assert model.config.rope_parameters["rope_type"] == "yarn"
    attention_reference.install(reference_model, "string", CASES["string"].params)
    ids = tokens(150, batch=2)
    torch.testing.assert_close(logits(model, ids), logits(reference_model, ids), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("ranking", RANKINGS)
def test_ms_poe_ranks_on_a_checkpoint_whose_rope_has_an_attention_factor(ranking):
    params = _ms_poe(dict(ranking=ranking))
    # YaRN factor 64: an attention factor of 1.42, large enough to change the ranks if it were kept
    model = ctxext.extend(_sharpened(yarn_checkpoint(64.0)), "ms-poe", factor=1, **params)
    reference_model = dense_reference("llama", "ms-poe", params, model=_sharpened(yarn_checkpoint(64.0)))
    ids = tokens(150, batch=2)
    torch.testing.assert_close(logits(model, ids), logits(reference_model, ids), atol=2e-4, rtol=1e-4)


def test_two_temperatures_are_never_stacked():
    model = yarn_checkpoint()
    with pytest.raises(CtxextError, match="stack"):
        ctxext.extend(model, "dca", factor=2, temperature=True)
    assert not ctxext.is_extended(model) and model.config._attn_implementation == "sdpa"
    ctxext.extend(model, "dca", factor=2)  # without DCA's temperature it is fine


def _with_log_scaling(method: str) -> dict:
    """The method's test parameters plus log_scaling (DCA's own temperature off: the two never stack)."""
    params = {**CASES[method].params, "log_scaling": True}
    if method == "dca":
        params["temperature"] = False
    return params


@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_log_scaling_matches_dense_reference(method, family, block):
    ids = tokens(150, batch=2)
    params = _with_log_scaling(method)
    got = logits(extend_tiny(family, method, params), ids)
    want = logits(dense_reference(family, method, params), ids)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    without = logits(extend_tiny(family, method, {**params, "log_scaling": False}), ids)
    assert not torch.allclose(got, without)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_log_scaling_changes_nothing_up_to_the_original_length(method):
    ids = tokens(NATIVE, batch=2)
    params = _with_log_scaling(method)
    want = logits(extend_tiny("llama", method, {**params, "log_scaling": False}), ids)
    assert torch.equal(logits(extend_tiny("llama", method, params), ids), want)


@pytest.mark.parametrize("method", ["string", "rerope"])
def test_log_scaling_uses_each_rows_own_positions(method, block):
    rows, ids, mask = _left_padded([150, 101, 37])
    model = extend_tiny("llama", method, _with_log_scaling(method))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = logits(model, ids, attention_mask=mask, position_ids=positions)
    for i, row in enumerate(rows):
        torch.testing.assert_close(batched[i, -len(row) :], logits(model, row[None])[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["self-extend", "rerope"])
def test_log_scaling_cached_generate_equals_recomputing_the_prefix(method):
    model = extend_tiny("llama", method, _with_log_scaling(method))
    prompt = tokens(NATIVE - 8)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)
    sequence = prompt
    for _ in range(20):
        following = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, following], dim=1)
    assert torch.equal(generated, sequence)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_log_scaling_never_stacks_on_the_rope_attention_factor(method):
    model = yarn_checkpoint()
    with pytest.raises(CtxextError, match="stack"):
        ctxext.extend(model, method, factor=2, **_with_log_scaling(method))
    assert not ctxext.is_extended(model) and model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "family, message",
    [("gemma3_text", "per-layer-type"), ("mistral_sliding", "sliding-window")],
)
def test_unsupported_models_are_refused(family, message):
    if family == "mistral_sliding":
        from transformers import AutoModelForCausalLM, MistralConfig

        config = MistralConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=1,
            intermediate_size=64,
            vocab_size=128,
            sliding_window=32,
        )
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = make_model(family)
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(model, "string", factor=2)
    assert not ctxext.is_extended(model)


def test_dynamic_rope_is_refused():
    model = make_model("llama")
    model.config.rope_parameters = {**model.config.rope_parameters, "rope_type": "dynamic", "factor": 2.0}
    with pytest.raises(CtxextError, match="static rope"):
        ctxext.extend(model, "dca", factor=2)


def test_packed_sequences_and_4d_masks_are_refused():
    model = extend_tiny("llama", "string")
    ids = tokens(20)
    packed = torch.cat([torch.arange(10), torch.arange(10)])[None]
    with pytest.raises(CtxextError, match="consecutive position ids|packed"):
        logits(model, ids, position_ids=packed)
    with pytest.raises(CtxextError, match="4D"):
        logits(model, ids, attention_mask=torch.ones(1, 1, 20, 20, dtype=torch.bool))


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("string", dict(shifted_offset=10, local_value=10), "below shifted_offset"),
        ("dca", dict(chunk_size=8, local_window=8), "local_window < chunk_size"),
        ("lm-infinite", dict(window=NATIVE + 1), "must not exceed"),
        ("lm-infinite", dict(top_k=-1), "top_k must be at least 0"),
        ("lm-infinite", dict(top_k=2.5), "whole number"),
        ("lm-infinite", dict(top_k_from_layer=-1), "at least 0"),
        ("lm-infinite", dict(top_k_distance=-1), "at least 0"),
        ("lm-infinite", dict(top_k=5, top_k_distance=NATIVE + 1), "top_k_distance .* must not exceed"),
        ("self-extend", dict(group_size=0), "at least 1"),
        ("ms-poe", dict(min_ratio=2.0, max_ratio=1.0), "min_ratio <= max_ratio"),
        ("dca", dict(chunk_size=10.5), "whole number"),
        ("rerope", dict(window=NATIVE), "below the original length"),
        ("rerope", dict(window=0), "at least 1"),
        ("rerope", dict(leaky=1.0), "above 1"),
        ("rerope", dict(leaky=True), "above 1"),
        ("rerope", dict(leaky="2"), "above 1"),
        ("string", dict(log_scaling="yes"), "true or false"),
        ("dca", dict(temperature=True, log_scaling=True), "stack two temperatures"),
    ],
)
def test_bad_parameters_get_clear_errors(method, params, message):
    model = make_model("llama")
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(model, method, factor=2, **params)
    assert not ctxext.is_extended(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(method, dtype, block):
    ids = tokens(150, batch=2)
    model = extend_tiny("llama", method, dtype=dtype)
    cpu = logits(model, ids).float()
    got = logits(model.to("cuda"), ids.to("cuda")).float().cpu()
    tolerance = 1e-3 if dtype == torch.float32 else 2e-2
    assert (got - cpu).abs().max() < tolerance
    rows, padded, mask = _left_padded([60, 45])
    batched = model.generate(
        padded.cuda(), attention_mask=mask.cuda(), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
    )
    assert batched.shape == (2, padded.shape[1] + 8)


def _cli_flags(params: dict) -> list[str]:
    """``{"chunk_size": 48, "temperature": True}`` as ``ctxext patch`` flags: ``--chunk-size 48 --temperature true``."""
    flags = []
    for name, value in params.items():
        flags += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def test_cli_patch_records_an_attention_method_that_from_pretrained_reapplies(tiny_dir, capsys):
    from ctxext.cli import main

    original = (tiny_dir / "config.json").read_bytes()
    dca = CASES["dca"]
    assert main(["patch", "--method", "dca", "--factor", str(dca.factor), *_cli_flags(dca.params), str(tiny_dir)]) == 0
    assert "ctxext.from_pretrained" in capsys.readouterr().out
    reloaded = ctxext.from_pretrained(tiny_dir)
    assert reloaded.config._attn_implementation == "ctxext_dca"
    ids = tokens(150)
    torch.testing.assert_close(logits(reloaded, ids), logits(extend_tiny("llama", "dca"), ids), atol=1e-6, rtol=1e-6)
    assert main(["unpatch", str(tiny_dir)]) == 0
    assert (tiny_dir / "config.json").read_bytes() == original
    with pytest.raises(SystemExit):
        main(["patch", "--method", "dca", "--factor", str(dca.factor), "--temperature", "maybe", str(tiny_dir)])
    assert (tiny_dir / "config.json").read_bytes() == original
