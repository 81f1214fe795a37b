"""The ctxext command line end to end, in subprocesses; bad input leaves files untouched."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctxext.cli import main

from support.models import NATIVE, logits, tokens

STOCK_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[2])).logits, sys.argv[3])
assert "ctxext" not in sys.modules
"""


def ctxext(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ctxext.cli", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"ctxext {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_help_everywhere(capsys):
    assert "usage: ctxext" in ctxext("--help").stdout
    for command in ("patch", "unpatch", "info", "methods", "passkey", "probe"):
        assert main([command, "--help"]) == 0
        assert "usage: ctxext " + command in capsys.readouterr().out


def test_methods_lists_parameters_and_papers():
    out = ctxext("methods").stdout
    for name in ("pi (alias: linear)", "ntk", "dynamic-ntk", "yarn", "dynamic-yarn", "llama3", "longrope"):
        assert name in out
    assert "--beta-fast (default 32.0)" in out and "arxiv.org/abs/2309.00071" in out


def test_patch_in_place_then_stock_reload_then_unpatch_byte_for_byte(tiny_dir, tmp_path):
    original = (tiny_dir / "config.json").read_bytes()
    out = ctxext("patch", "--method", "yarn", "--factor", "8", tiny_dir).stdout
    assert "yarn x8, 64 -> 512 tokens" in out
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["max_position_embeddings"] == 8 * NATIVE and config["ctxext"]["method"] == "yarn"

    import ctxext as api

    ids = tokens(3 * NATIVE)
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", STOCK_LOAD, tiny_dir, tmp_path / "ids.pt", tmp_path / "out.pt"], check=True)
    in_process = api.from_pretrained(tiny_dir).eval()
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(in_process, ids))

    info = ctxext("info", tiny_dir).stdout
    assert "LlamaForCausalLM" in info and "extended length: 512" in info and "type yarn" in info
    assert "unpatched" in ctxext("unpatch", tiny_dir).stdout
    assert (tiny_dir / "config.json").read_bytes() == original
    assert not (tiny_dir / "config.json.ctxext-orig").exists()


def test_patch_output_copy_and_target_length(tiny_dir, tmp_path):
    before = snapshot(tiny_dir)
    out_dir = tmp_path / "patched"
    ctxext("patch", "--method", "dynamic-ntk", "--target-length", "256", "--alpha", "2", "--output", out_dir, tiny_dir)
    assert snapshot(tiny_dir) == before
    config = json.loads((out_dir / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0}
    assert config["max_position_embeddings"] == NATIVE and config["ctxext"]["target_length"] == 256
    assert (out_dir / "model.safetensors").exists()


def test_dry_run_prints_diff_and_writes_nothing(tiny_dir):
    before = snapshot(tiny_dir)
    out = ctxext("patch", "--method", "pi", "--factor", "2", "--dry-run", tiny_dir).stdout
    assert '-  "max_position_embeddings": 64' in out and '+  "max_position_embeddings": 128' in out
    assert snapshot(tiny_dir) == before


def test_replace_and_longrope_list_flags(tiny_dir):
    ctxext("patch", "--method", "pi", "--factor", "2", tiny_dir)
    ctxext(
        "patch",
        "--method",
        "longrope",
        "--factor",
        "4",
        "--replace",
        "--long-factor",
        ",".join(["2"] * 8),
        "--short-factor",
        "1",
        tiny_dir,
    )
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["rope_parameters"]["long_factor"] == [2.0] * 8 and config["ctxext"]["method"] == "longrope"
    ctxext("unpatch", tiny_dir)
    assert "ctxext" not in json.loads((tiny_dir / "config.json").read_text())


BAD = [
    (
        ["--method", "rope-magic", "--factor", "2"],
        "unknown method 'rope-magic' (valid: block-retrieval, dca, dynamic-ntk",
    ),
    (["--method", "yarn", "--factor", "1"], "factor must be greater than 1"),
    (["--method", "yarn", "--factor", "0.5"], "factor must be greater than 1"),
    (["--method", "yarn", "--factor", "nan"], "factor must be a finite number"),
    (["--method", "yarn", "--factor", "inf"], "factor must be a finite number"),
    (["--method", "yarn", "--factor", "two"], "invalid float value: 'two'"),
    (["--method", "yarn", "--target-length", "64"], "target length 64 must be above the original length 64"),
    (["--method", "yarn", "--factor", "2", "--alpha", "2"], "method 'yarn' has no parameter alpha"),
    (["--method", "yarn"], "one of the arguments --factor --target-length is required"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_one_line_error_files_untouched(args, message, tiny_dir, expect_error):
    before = snapshot(tiny_dir)
    expect_error(["patch", *args, tiny_dir], message)
    assert snapshot(tiny_dir) == before


def test_bad_input_in_a_subprocess_exits_non_zero(tiny_dir):
    result = ctxext("patch", "--method", "yarn", "--factor", "0.5", tiny_dir, check=False)
    assert result.returncode == 2 and result.stderr == (
        "ctxext: error: factor must be greater than 1 (got 0.5); 1 or less would not extend anything\n"
    )


@pytest.fixture
def expect_error(capsys):
    """Run the CLI in this process (fast) and check for one clean error line."""

    def check(args, message):
        capsys.readouterr()  # drop what the test printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("ctxext: error: ") and message in err, err

    return check


def test_missing_paths(tmp_path, expect_error):
    expect_error(["patch", "--method", "yarn", "--factor", "2", tmp_path / "nope"], "no such file or directory")
    expect_error(["patch", "--method", "yarn", "--factor", "2", tmp_path], "no config.json in this directory")
    expect_error(["info", tmp_path / "nope"], "no such file or directory")
    expect_error(["unpatch", tmp_path], "no config.json")


def test_read_only_and_unreadable_directories(tiny_dir, expect_error):
    before = snapshot(tiny_dir)
    os.chmod(tiny_dir, stat.S_IRUSR | stat.S_IXUSR)
    try:
        expect_error(["patch", "--method", "yarn", "--factor", "2", tiny_dir], "directory is read-only")
    finally:
        os.chmod(tiny_dir, 0o755)
    assert snapshot(tiny_dir) == before
    os.chmod(tiny_dir, 0)
    try:
        expect_error(["patch", "--method", "yarn", "--factor", "2", tiny_dir], "directory is not readable")
    finally:
        os.chmod(tiny_dir, 0o755)
    assert snapshot(tiny_dir) == before


def test_non_rope_model_double_patch_and_unpatch_of_clean_dir(tiny_dir, tmp_path, expect_error):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(gpt2)
    before = snapshot(gpt2)
    expect_error(["patch", "--method", "yarn", "--factor", "2", gpt2], "model type 'gpt2' has no rotary")
    assert snapshot(gpt2) == before

    expect_error(["unpatch", tiny_dir], "carries no ctxext patch")
    assert main(["patch", "--method", "yarn", "--factor", "2", str(tiny_dir)]) == 0
    patched = snapshot(tiny_dir)
    expect_error(["patch", "--method", "pi", "--factor", "2", tiny_dir], "already patched with 'yarn'")
    assert snapshot(tiny_dir) == patched


def test_existing_output_is_refused(tiny_dir, tmp_path, expect_error):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    expect_error(
        ["patch", "--method", "yarn", "--factor", "2", "--output", tmp_path / "taken", tiny_dir],
        "output already exists",
    )
    assert (tmp_path / "taken" / "file").read_text() == "keep me"


def test_an_internal_error_is_one_line_and_its_traceback_is_behind_ctxext_debug(monkeypatch, capsys):
    from ctxext.cli import info as info_command

    def broken(args):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(info_command, "run", broken)
    monkeypatch.delenv("CTXEXT_DEBUG", raising=False)
    assert main(["info", "smollm2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ctxext: error: internal error (RuntimeError: something inside broke); run with CTXEXT_DEBUG=1 "
        "for the traceback"
    ]
    monkeypatch.setenv("CTXEXT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something inside broke"):
        main(["info", "smollm2"])
