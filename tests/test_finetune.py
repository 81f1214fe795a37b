"""LoRA fine-tuning of tiny extended models: loss goes down, save/load, merge, resume, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

import ctxext
from ctxext.cli import main
from ctxext.eval.perplexity import perplexity as eval_perplexity
from ctxext.eval.perplexity import score_window, window_count
from ctxext.eval.summary import _ppl
from ctxext.recipes import finetune, load_finetuned

from support.models import FAMILIES, WORDS, make_model, tokens, word_tokenizer

pytest.importorskip("peft")

# a learnable stream: a fixed sequence of 12 token ids, repeated
STREAM = torch.randperm(120, generator=torch.Generator().manual_seed(0))[:12].add(3).repeat(100)
FAST = dict(factor=4, seq_len=48, eval_length=128, lr=2e-2, warmup_steps=0, progress=False)


def run(out, steps=6, model=None, **kwargs):
    return finetune(model or make_model("llama"), STREAM, out, steps=steps, **{**FAST, **kwargs})


def test_training_lowers_the_loss_and_the_held_out_perplexity(tmp_path):
    result = run(tmp_path / "out", steps=20, lr=5e-2)
    assert len(result.losses) == 20 and result.tokens_per_second > 0
    assert sum(result.losses[-4:]) < sum(result.losses[:4])
    assert result.perplexity_after < 0.8 * result.perplexity_before
    meta = json.loads((tmp_path / "out" / "ctxext.json").read_text())
    assert meta["extension"]["method"] == "yarn" and meta["extension"]["target_length"] == 256
    assert meta["eval"] == {
        "length": 128,
        "perplexity_before": result.perplexity_before,
        "perplexity_after": result.perplexity_after,
    }
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_the_reported_perplexity_is_the_evaluation_perplexity(tmp_path):
    """finetune's held-out perplexity at L is ``ctxext eval``'s for the same model, ids (the last L tokens and the
    one before them), window L and stride: its per-window records as the report sums them."""
    length = FAST["eval_length"]
    held_out = STREAM[-(length + 1) :]
    result = run(tmp_path / "out", steps=2)
    records = [
        vars(score_window(result.model, held_out, k, length, length, length))
        for k in range(window_count(len(held_out), length, length))
    ]
    assert (
        result.perplexity_after
        == _ppl(records)["ppl"]
        == eval_perplexity(result.model, held_out, length, stride=length)
    )
    # before training the model is the extended base model (the LoRA update starts at zero)
    extended = ctxext.extend(make_model("llama"), "yarn", factor=FAST["factor"])
    assert result.perplexity_before == pytest.approx(eval_perplexity(extended, held_out, length), rel=1e-6)


def test_bf16_autocast_trains_fp32_adapter_weights(tmp_path):
    result = run(tmp_path / "out", steps=2, precision="bf16", evaluate=False)
    assert all(math.isfinite(loss) for loss in result.losses)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_adapter_save_and_load_gives_the_same_logits(tmp_path):
    result = run(tmp_path / "out")
    ids = tokens(200)
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        reloaded = load_finetuned(tmp_path / "out", base=make_model("llama")).eval()
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
    assert ctxext.is_extended(reloaded.get_base_model())


def test_merged_checkpoint_equals_the_adapter_model(tmp_path):
    result = run(tmp_path / "out", merge=True)
    ids = tokens(200)
    with torch.no_grad():
        adapter = load_finetuned(tmp_path / "out", base=make_model("llama")).eval()(input_ids=ids).logits
        merged = ctxext.from_pretrained(result.merged).eval()
        stock = AutoModelForCausalLM.from_pretrained(result.merged).eval()  # yarn is a stock rope type
        assert torch.allclose(merged(input_ids=ids).logits, adapter, atol=1e-5)
        assert torch.equal(stock(input_ids=ids).logits, merged(input_ids=ids).logits)
    assert merged.config.ctxext["method"] == "yarn"


@pytest.mark.parametrize("tied", [False, True])
def test_longlora_lite_trains_embeddings_and_norms(tmp_path, tied):
    torch.manual_seed(0)
    config = LlamaConfig(**{**FAMILIES["llama"]().to_dict(), "tie_word_embeddings": tied})
    model = AutoModelForCausalLM.from_config(config)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(tmp_path / "out", model=model, recipe="longlora-lite", merge=True)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in saved) and any("layernorm" in k for k in saved)
    merged = AutoModelForCausalLM.from_pretrained(result.merged).state_dict()
    assert not torch.equal(merged["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert not torch.equal(merged["model.norm.weight"], original["model.norm.weight"])
    assert ctxext.from_pretrained(result.merged).config.ctxext["method"] == "pi"
    if tied:
        assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])


def test_resume_continues_from_the_saved_step(tmp_path):
    straight = run(tmp_path / "straight", steps=4, save_every=2)
    run(tmp_path / "resumed", steps=2, save_every=2)
    resumed = run(tmp_path / "resumed", steps=4, save_every=2, resume=True)
    assert resumed.losses == straight.losses[2:]
    assert resumed.perplexity_before == straight.perplexity_before
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path):
    run(tmp_path / "out", steps=2, save_every=2)
    with pytest.raises(
        ctxext.CtxextError, match=r"cannot resume from .*step-00000002: it was made with other settings"
    ):
        run(tmp_path / "out", steps=4, resume=True, lr=1e-3)
    with pytest.raises(ctxext.CtxextError, match="the last checkpoint is at step 2"):
        run(tmp_path / "out", steps=2, resume=True)
    with pytest.raises(ctxext.CtxextError, match="no checkpoint to resume from"):
        run(tmp_path / "other", steps=2, resume=True)


@pytest.fixture
def tiny_with_tokenizer(tiny_dir):
    """The tiny Llama directory plus a word-level tokenizer whose ids fit its vocabulary."""
    word_tokenizer().save_pretrained(tiny_dir)
    return tiny_dir


def test_cli_finetune_end_to_end(tiny_with_tokenizer, tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(" ".join(WORDS * 40))
    out = tmp_path / "out"
    assert (
        main(
            [
                "finetune",
                str(tiny_with_tokenizer),
                "--method",
                "yarn",
                "--factor",
                "4",
                "--recipe",
                "pose-lora",
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                "3",
                "--seq-len",
                "32",
                "--eval-length",
                "64",
                "--save-every",
                "2",
                "--merge",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"adapter saved to {out}" in printed and "perplexity at 64 tokens:" in printed
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "ctxext.json").read_text())["base_model"] == str(tiny_with_tokenizer.resolve())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert ctxext.from_pretrained(out / "merged").config.ctxext["target_length"] == 256
    assert load_finetuned(out).peft_config["default"].r == 8


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "{missing}"], "data {missing}: no such file or directory"),
        (["--data", "{empty}"], "data {empty}: no text in it"),
        (["--seq-len", "512"], "seq-len 512 is above the target length 256"),
        (["--recipe", "pose"], "unknown recipe 'pose' (valid: longlora-lite, pi-lora, pose-lora)"),
        (["--resume"], "{out}: no checkpoint to resume from (a run writes them when given save_every)"),
        (["--steps", "0"], "steps must be a positive integer, got 0"),
    ],
)
def test_cli_finetune_bad_input_gets_one_line_errors(tiny_with_tokenizer, tmp_path, capsys, args, message):
    paths = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt", "out": tmp_path / "out"}
    paths["empty"].write_text("\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(WORDS * 40))
    base = [
        "finetune",
        str(tiny_with_tokenizer),
        "--factor",
        "4",
        "--data",
        str(corpus),
        "--steps",
        "2",
        "--out",
        str(paths["out"]),
    ]
    assert main(base + [a.format(**paths) for a in args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"ctxext: error: {message.format(**paths)}"]


@pytest.mark.parametrize("family", ["gemma3_text", "gpt_neox", "phi3"])  # per-layer rope, fused qkv, longrope
def test_other_families_train_and_reload(family, tmp_path):
    method = "longrope" if family == "phi3" else "yarn"
    params = {"long_factor": 2.0} if method == "longrope" else {}
    result = run(
        tmp_path / "out", steps=1, model=make_model(family), method=method, method_params=params, evaluate=False
    )
    targets = result.model.peft_config["default"].target_modules
    assert targets and all("attn" in t or "attention" in t for t in targets)
    ids = tokens(150)
    with torch.no_grad():
        reloaded = load_finetuned(tmp_path / "out", base=make_model(family)).eval()
        assert torch.equal(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits)
