"""Our rope frequencies equal transformers' own functions, and our formulas their references."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import ctxext
from ctxext.methods.dynamic_yarn import compute_dynamic_yarn_parameters
from ctxext.methods.ntk import ntk_theta
from ctxext.methods.yarn import yarn_inv_freq

L = 256
THETA = 10000.0


def _config(head_dim: int, partial: float, rope_parameters: dict | None = None, max_pos: int = L):
    heads = 2
    rope = {"rope_type": "default", "rope_theta": THETA, **(rope_parameters or {})}
    if partial == 1.0:
        return LlamaConfig(
            hidden_size=head_dim * heads,
            num_attention_heads=heads,
            num_key_value_heads=1,
            intermediate_size=32,
            num_hidden_layers=1,
            vocab_size=32,
            max_position_embeddings=max_pos,
            rope_parameters=rope,
        )
    return GPTNeoXConfig(
        hidden_size=head_dim * heads,
        num_attention_heads=heads,
        intermediate_size=32,
        num_hidden_layers=1,
        vocab_size=32,
        max_position_embeddings=max_pos,
        rotary_pct=partial,
        rope_parameters={**rope, "partial_rotary_factor": partial},
    )


def _rotary(model):
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")][0]


SHAPES = [(16, 1.0), (64, 1.0), (128, 1.0), (64, 0.5), (32, 0.25)]
FACTORS = [1.5, 2.0, 4.0, 8.0]

# ctxext method -> (its parameters, transformers' rope parameters for the same patch)
TRANSFORMERS_TYPES = {
    "pi": ({}, lambda s: {"rope_type": "linear", "factor": s}),
    "yarn": ({}, lambda s: {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L}),
    "llama3": (
        {},
        lambda s: {
            "rope_type": "llama3",
            "factor": s,
            "original_max_position_embeddings": L,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
    ),
    "longrope": (
        {"long_factor": 3.0, "short_factor": 1.0},
        lambda s: {"rope_type": "longrope", "factor": s, "original_max_position_embeddings": L},
    ),
}


@pytest.mark.parametrize("head_dim,partial", SHAPES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("method", sorted(TRANSFORMERS_TYPES))
def test_matches_transformers_function(method, factor, head_dim, partial):
    params, reference = TRANSFORMERS_TYPES[method]
    model = AutoModelForCausalLM.from_config(_config(head_dim, partial))
    ctxext.extend(model, method, factor=factor, **params)
    rotary = _rotary(model)

    rope = reference(factor)
    dim = int(head_dim * partial)
    if method == "longrope":
        rope.update(long_factor=[3.0] * (dim // 2), short_factor=[1.0] * (dim // 2))
    ref_config = _config(head_dim, partial, rope, max_pos=round(L * factor))
    inv_freq, attention = ROPE_INIT_FUNCTIONS[rope["rope_type"]](ref_config, "cpu")
    if method == "longrope":  # the module shows the short factors until it sees a long input
        long_inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](ref_config, "cpu", seq_len=L + 1)
        model(input_ids=torch.zeros(1, L + 1, dtype=torch.long))
        inv_freq = long_inv_freq
    assert torch.equal(rotary.inv_freq, inv_freq)
    assert rotary.attention_scaling == pytest.approx(attention, rel=1e-12)


@pytest.mark.parametrize("head_dim,partial", SHAPES)
@pytest.mark.parametrize("factor", FACTORS)
def test_yarn_formula_matches_transformers(factor, head_dim, partial):
    dim = int(head_dim * partial)
    rope = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L}
    expected, attention = ROPE_INIT_FUNCTIONS["yarn"](_config(head_dim, partial, rope), "cpu")
    ours = yarn_inv_freq(THETA, dim, L, factor, 32.0, 1.0)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    assert attention == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.parametrize("head_dim,partial", SHAPES)
@pytest.mark.parametrize("factor", FACTORS)
def test_ntk_equals_transformers_dynamic_at_target_length(factor, head_dim, partial):
    # transformers' dynamic NTK with alpha 1 at length s*L uses exactly the fixed NTK base for s.
    dim = int(head_dim * partial)
    config = _config(head_dim, partial, {"rope_type": "dynamic", "factor": 1.0})
    expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=int(L * factor))
    model = AutoModelForCausalLM.from_config(_config(head_dim, partial))
    ctxext.extend(model, "ntk", factor=factor)
    torch.testing.assert_close(_rotary(model).inv_freq, expected, rtol=1e-6, atol=0)
    reference = 1.0 / (ntk_theta(THETA, dim, factor) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    torch.testing.assert_close(_rotary(model).inv_freq, reference.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("length_factor", [1.0, 1.5, 3.0])
def test_dynamic_yarn_is_yarn_at_the_current_length(length_factor):
    config = _config(
        64,
        1.0,
        {
            "rope_type": "ctxext_dynamic_yarn",
            "original_max_position_embeddings": L,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
    )
    inv_freq, attention = compute_dynamic_yarn_parameters(config, "cpu", seq_len=int(L * length_factor))
    expected = yarn_inv_freq(THETA, 64, L, length_factor, 32.0, 1.0)
    assert torch.equal(inv_freq, expected)
    assert attention == pytest.approx(1.0 if length_factor == 1 else 0.1 * math.log(length_factor) + 1)


def test_pi_dense_reference():
    model = AutoModelForCausalLM.from_config(_config(64, 1.0))
    ctxext.extend(model, "linear", factor=4)
    reference = 1.0 / (THETA ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)) / 4
    torch.testing.assert_close(_rotary(model).inv_freq, reference.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["yarn", "ntk", "dynamic-yarn", "pi"])
def test_inv_freq_stays_fp32_under_bf16(method):
    model = AutoModelForCausalLM.from_config(_config(64, 1.0))
    ctxext.extend(model, method, factor=4)
    fp32 = _rotary(model).inv_freq.clone()
    model.to(torch.bfloat16)
    rotary = _rotary(model)
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, fp32)
    assert next(model.parameters()).dtype == torch.bfloat16
    # the angles are computed in fp32 and only the final cos/sin take the model's dtype
    x = torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    position_ids = torch.tensor([[4 * L - 1]])
    cos, _ = rotary(x, position_ids)
    inv_freq = rotary.inv_freq  # dynamic methods recompute it for this length
    assert inv_freq.dtype == torch.float32
    expected = torch.cos(position_ids[..., None].double() * inv_freq.double()) * rotary.attention_scaling
    torch.testing.assert_close(cos[..., : fp32.numel()].double(), expected.to(torch.bfloat16).double())
