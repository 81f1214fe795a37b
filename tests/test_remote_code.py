"""``patch --remote-code``: stock transformers (``trust_remote_code=True``) loads an attention-level patch."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
from ctxext.checkpoint.remote_code import MODULE
from ctxext.cli import main
from ctxext.errors import CtxextError


def _tokens(n: int) -> torch.Tensor:
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["rerope", "self-extend", "lm-infinite"])
def test_stock_load_with_remote_code_equals_ctxext_from_pretrained(tiny_dir, tmp_path, method):
    out = tmp_path / "patched"
    ctxext.patch_directory(tiny_dir, method, factor=4, output=out, remote_code=True)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("ctxext_remote.Ctxext")
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ours = ctxext.from_pretrained(out)
    assert ctxext.is_extended(stock) and stock.config.ctxext["method"] == ours.config.ctxext["method"]
    ids = _tokens(150)  # beyond the native 64 tokens, where the method acts
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, ours(ids).logits)
        plain = AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits
    assert not torch.allclose(stock(ids).logits, plain)


def test_unpatch_removes_the_module_and_the_auto_map(tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    original = (model / "config.json").read_bytes()
    assert main(["patch", "--method", "rerope", "--factor", "2", "--remote-code", str(model)]) == 0
    assert (model / MODULE).is_file() and "auto_map" in json.loads((model / "config.json").read_text())
    assert main(["unpatch", str(model)]) == 0
    assert f"removed {MODULE}" in capsys.readouterr().out
    assert (model / "config.json").read_bytes() == original and not (model / MODULE).exists()


def test_without_the_flag_no_remote_code_is_written(tiny_dir, tmp_path):
    out = tmp_path / "patched"
    ctxext.patch_directory(tiny_dir, "rerope", factor=2, output=out)
    assert not (out / MODULE).exists() and "auto_map" not in json.loads((out / "config.json").read_text())


def test_a_users_module_of_that_name_is_left_alone(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    ctxext.patch_directory(model, "rerope", factor=2, remote_code=True)
    (model / MODULE).write_text("# my own code\n")
    ctxext.unpatch_directory(model)
    assert (model / MODULE).read_text() == "# my own code\n"


@pytest.mark.parametrize(
    "method,kwargs,message",
    [
        ("yarn", {}, "loads in stock transformers from config.json alone"),
        ("auto", {}, "needs an attention-level method of its own"),
        ("rerope", {"remote_code": "yes"}, "remote_code must be true or false"),
    ],
)
def test_remote_code_where_it_has_no_use_is_refused(tiny_dir, tmp_path, method, kwargs, message):
    before = (tiny_dir / "config.json").read_bytes()
    with pytest.raises(CtxextError, match=message):
        ctxext.patch(tiny_dir, method, factor=2, output=tmp_path / "out", **{"remote_code": True, **kwargs})
    assert (tiny_dir / "config.json").read_bytes() == before and not (tmp_path / "out").exists()


def test_lm_evals_hf_model_loads_the_patch_from_the_directory(tiny_eval_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    out = tmp_path / "patched"
    ctxext.patch_directory(tiny_eval_dir, "self-extend", factor=4, output=out, remote_code=True)
    lm = HFLM(pretrained=str(out), trust_remote_code=True, max_length=256, batch_size=1, device="cpu")
    assert ctxext.is_extended(lm.model) and lm.model.config.ctxext["method"] == "self-extend"
    ids = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, ctxext.from_pretrained(out)(ids).logits)
