"""extend, save_pretrained, reload: same logits, with ctxext and (for stock rope types) without."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import ctxext
from ctxext.core.registry import get_method

from support.method_cases import CASES, ROPE_METHODS
from support.models import NATIVE, logits, make_model, tokens

STOCK_LOAD = """
import sys, torch
assert "ctxext" not in sys.modules
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
assert "ctxext" not in sys.modules
"""


def _extended(family: str, method: str):
    case = CASES[method]
    return ctxext.extend(make_model(family), method, factor=case.factor, **case.roundtrip_params)


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_save_and_reload_with_ctxext(method, tmp_path):
    model = _extended("llama", method)
    ids = tokens(3 * NATIVE)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = ctxext.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(reloaded, ids), expected)
    assert reloaded.config.ctxext["method"] == method
    ctxext.restore(reloaded)
    assert torch.equal(logits(reloaded, ids), logits(make_model("llama"), ids))


@pytest.mark.parametrize(
    "family,method",
    [
        ("gemma3_text", "yarn"),
        ("phi3", "longrope"),
        ("gpt_neox", "yarn"),
        ("qwen3", "dynamic-yarn"),
        ("mistral", "llama3"),
    ],
)
def test_save_and_reload_other_families(family, method, tmp_path):
    model = _extended(family, method)
    ids = tokens(3 * NATIVE)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(ctxext.from_pretrained(tmp_path).eval(), ids), logits(model, ids))


@pytest.mark.parametrize("method", [m for m in ROPE_METHODS if get_method(m).stock_loadable])
def test_stock_transformers_reload_without_ctxext(method, tmp_path):
    model = _extended("llama", method)
    ids = tokens(3 * NATIVE)
    model.save_pretrained(tmp_path / "model")
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run(
        [sys.executable, "-c", STOCK_LOAD, str(tmp_path / "model"), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        check=True,
        capture_output=True,
    )
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(model, ids))
