"""What transformers 5/4, vLLM and SGLang make of the config.json that ``patch_directory`` writes.

One row per method x engine (``ctxext.serving.engine_view``, the engines' documented rules),
the serving hints of ``PatchResult``, and the proof that the extra fields written for
transformers 4.x / vLLM (``rope_scaling``, top-level ``rope_theta``) leave stock transformers 5
reloading exactly the same model.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
from ctxext.serving import ENGINES, engine_view, serve_commands

from support.models import NATIVE, logits, make_model, tokens
from support.serving import EXPECTED, FACTOR, SGL, TARGET, VLLM, patch_every_method

NTK_THETA = 10000.0 * FACTOR ** (16 / 14)  # head_dim 16
ROWS = [(method, engine) for method in EXPECTED for engine in ENGINES]


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    return patch_every_method(tmp_path_factory.mktemp("serving"))


@pytest.mark.parametrize("method,engine", ROWS, ids=[f"{m}-{e}" for m, e in ROWS])
def test_engine_view_row(patched, method, engine):
    view = engine_view(patched[method][1])[engine]
    expected = EXPECTED[method][engine]
    obtained = (view.loads, view.rope_type, view.factor, view.max_length, view.extended)
    assert obtained == expected, f"{method} on {engine}: expected {expected}, obtained {obtained} ({view.note})"
    if not view.extended:
        assert view.note  # every engine that does not reproduce the extension says why, in one line
        assert "\n" not in view.note
    if method == "ntk":
        assert view.rope_theta == pytest.approx(NTK_THETA)


def test_engine_view_on_tiny_dir_fixture(tiny_dir):
    """The conftest fixture, patched in place: yarn is served by every engine at exactly the target."""
    ctxext.patch_directory(tiny_dir, "yarn", factor=FACTOR)
    views = engine_view(json.loads((tiny_dir / "config.json").read_text()))
    assert all(v.extended for v in views.values())
    assert views[VLLM].max_length == views[SGL].max_length == TARGET


def test_unpatched_config_is_native(tiny_dir):
    views = engine_view(json.loads((tiny_dir / "config.json").read_text()))
    assert views[VLLM].max_length == NATIVE and views[VLLM].rope_type == "default"
    assert not any(v.extended for v in views.values()) and all(v.loads for v in views.values())


def test_written_rope_scaling_mirrors_rope_parameters(patched):
    for method in ("pi", "yarn", "llama3", "longrope", "dynamic-ntk"):
        data = patched[method][1]
        rope = data["rope_parameters"]
        assert data["rope_scaling"] == {**rope, "type": rope["rope_type"]}
        assert data["rope_theta"] == rope["rope_theta"]
    assert "rope_scaling" not in patched["ntk"][1]
    assert patched["ntk"][1]["rope_theta"] == pytest.approx(NTK_THETA)  # transformers 4.x reads the top level
    for method in ("dynamic-yarn", "dca", "self-extend"):
        assert "rope_scaling" not in patched[method][1]


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "llama3", "longrope", "dynamic-ntk"])
def test_stock_transformers5_reload_unchanged(patched, tmp_path, method):
    """The config as written (with rope_scaling / rope_theta for 4.x and vLLM) and the same config without
    them (what ctxext wrote before) give stock transformers 5 the same rope parameters and the same logits."""
    directory, data, _ = patched[method]
    bare = tmp_path / "bare"
    shutil.copytree(directory, bare)
    stripped = {k: v for k, v in data.items() if k not in ("rope_scaling", "rope_theta")}
    (bare / "config.json").write_text(json.dumps(stripped))
    with_fields = AutoModelForCausalLM.from_pretrained(directory).eval()
    without = AutoModelForCausalLM.from_pretrained(bare).eval()
    got = {k: v for k, v in with_fields.config.rope_parameters.items() if k != "type"}
    assert got == without.config.rope_parameters
    ids = tokens(TARGET)
    assert torch.equal(logits(with_fields, ids), logits(without, ids))
    for a, b in zip(with_fields.model.rotary_emb.buffers(), without.model.rotary_emb.buffers()):
        assert torch.equal(a, b)


def test_pi_rope_does_not_depend_on_max_position_embeddings(patched, tmp_path):
    """Evidence for a later change (not made here): pi with max_position_embeddings = L instead of the target
    reloads in stock transformers 5 with the same rope and logits, and vLLM would then derive L x factor = target."""
    directory, data, _ = patched["pi"]
    low = tmp_path / "low"
    shutil.copytree(directory, low)
    (low / "config.json").write_text(json.dumps({**data, "max_position_embeddings": NATIVE}))
    ids = tokens(TARGET)
    assert torch.equal(
        logits(AutoModelForCausalLM.from_pretrained(directory).eval(), ids),
        logits(AutoModelForCausalLM.from_pretrained(low).eval(), ids),
    )
    assert engine_view(json.loads((low / "config.json").read_text()))[VLLM].max_length == TARGET


def test_unpatch_without_backup_drops_the_written_copies(tiny_dir):
    original = json.loads((tiny_dir / "config.json").read_text())
    ctxext.patch_directory(tiny_dir, "ntk", factor=FACTOR)
    (tiny_dir / "config.json.ctxext-orig").unlink()
    ctxext.unpatch_directory(tiny_dir)
    restored = json.loads((tiny_dir / "config.json").read_text())
    assert "rope_scaling" not in restored and "ctxext" not in restored
    assert restored["rope_parameters"] == original["rope_parameters"]
    assert restored.get("rope_theta", original["rope_parameters"]["rope_theta"]) == 10000.0


def test_patch_result_serve_commands(patched):
    directory, _, result = patched["yarn"]
    assert result.serve_commands == [
        f"transformers: AutoModelForCausalLM.from_pretrained({str(directory)!r})",
        f"vLLM: vllm serve {directory} --max-model-len {TARGET}",
        f"SGLang: python -m sglang.launch_server --model-path {directory} --context-length {TARGET}",
    ]
    pi = patched["pi"][2].serve_commands
    assert f"--max-model-len {TARGET}  # without it vLLM would accept {TARGET * FACTOR} tokens" in pi[1]
    # longrope: vLLM starts at the native length, and --max-model-len reaches the target with no override
    longrope_dir, _, longrope = patched["longrope"]
    assert f"vLLM: vllm serve {longrope_dir} --max-model-len {TARGET}" in longrope.serve_commands
    for method in ("dynamic-yarn", "dca", "self-extend", "dynamic-ntk"):
        lines = patched[method][2].serve_commands
        assert lines[-2].startswith("vLLM: cannot serve the extension: ")
        assert lines[-1].startswith("SGLang: cannot serve the extension: ")
    assert "ctxext.from_pretrained" in patched["dca"][2].serve_commands[0]


def test_serve_commands_long_target_needs_the_engine_override():
    config = {
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
        "ctxext": {"method": "ntk", "target_length": 128},
    }
    lines = serve_commands(config, "M")
    assert lines[1] == "vLLM: VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 vllm serve M --max-model-len 128"
    assert lines[2].startswith("SGLang: SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 ")


def test_sglang_dca_note_for_qwen_without_the_engine_config():
    config = {
        "model_type": "qwen2",
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
        "ctxext": {"method": "dca", "target_length": 128},
    }
    views = engine_view(config)
    assert "dual_chunk_attention_config" in views[SGL].note
    assert "dual_chunk_attention_config" not in views[VLLM].note


def test_cli_patch_prints_serve_lines(tiny_dir, capsys):
    from ctxext.cli import main

    assert main(["patch", "--method", "pi", "--factor", str(FACTOR), str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert f"serve: vLLM: vllm serve {tiny_dir} --max-model-len {TARGET}" in out
    assert "serve: transformers: AutoModelForCausalLM.from_pretrained(" in out


@pytest.fixture
def qwen_dir(tmp_path):
    make_model("qwen2").save_pretrained(tmp_path / "tiny-qwen2")
    return tmp_path / "tiny-qwen2"


def test_engine_config_sglang_writes_dual_chunk_attention_config_for_qwen_dca(qwen_dir, tmp_path):
    out = tmp_path / "dca"
    result = ctxext.patch(qwen_dir, "dca", factor=2, output=out, engine_config="sglang", chunk_size=40)
    written = json.loads((out / "config.json").read_text())
    # chunk_size c and local window w (default L/8) under SGLang's names: chunks of c - w tokens in both
    assert written["dual_chunk_attention_config"] == {
        "chunk_size": 40,
        "local_size": NATIVE // 8,
        "original_max_position_embeddings": NATIVE,
    }
    views = engine_view(written)
    assert views[SGL].extended and "SGLang's own Dual Chunk Attention" in views[SGL].note
    assert not views[VLLM].extended and not views["transformers-5"].extended
    assert result.serve_commands[-1] == (
        "SGLang: SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 python -m "
        f"sglang.launch_server --model-path {out} --context-length {2 * NATIVE}"
    )
    # ctxext reloads the same DCA patch; transformers ignores the engine section
    ids = tokens(2 * NATIVE)
    reference = ctxext.extend(make_model("qwen2"), "dca", factor=2, chunk_size=40)
    assert torch.equal(logits(ctxext.from_pretrained(out), ids), logits(reference, ids))


def test_unpatch_drops_the_engine_section_with_or_without_the_kept_original(qwen_dir):
    original = (qwen_dir / "config.json").read_bytes()
    ctxext.patch_directory(qwen_dir, "dca", factor=2, engine_config="sglang")
    ctxext.unpatch_directory(qwen_dir)
    assert (qwen_dir / "config.json").read_bytes() == original
    ctxext.patch_directory(qwen_dir, "dca", factor=2, engine_config="sglang")
    (qwen_dir / "config.json.ctxext-orig").unlink()
    ctxext.unpatch_directory(qwen_dir)
    restored = json.loads((qwen_dir / "config.json").read_text())
    assert "dual_chunk_attention_config" not in restored and "ctxext" not in restored


@pytest.mark.parametrize(
    "family,method,options,message",
    [
        ("llama", "dca", {}, "qwen2, qwen2_moe, qwen3, qwen3_moe models only"),
        ("qwen2", "yarn", {}, "needs --method dca"),
        ("qwen2", "dca", {"temperature": True}, "no temperature"),
        ("qwen2", "dca", {"log_scaling": True}, "no log_scaling"),
        ("qwen2", "auto", {}, "not auto"),
        ("qwen2", "dca", {"engine_config": "vllm"}, "unknown engine config"),
    ],
)
def test_engine_config_refusals_leave_the_directory_unchanged(tmp_path, family, method, options, message):
    make_model(family).save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    options = {"engine_config": "sglang", **options}
    with pytest.raises(ctxext.CtxextError, match=message):
        ctxext.patch(tmp_path / "m", method, factor=2, **options)
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
