"""Every count and length is bounded before work, and special files are refused for what they are.

A count with no bound (``--samples 1000000000``) grows until the kernel kills the process, a target length
beyond any model (``2**63``) is written into a config, and a FIFO where a file is expected blocks the read
forever. Each row below runs the real command on a workspace whose model has corrupt weights, so the
refusal must come before the model loads, and every file must be as it was (kind, mode, sha256).
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from ctxext.cli import main
from ctxext.core import validate

from support.cli_harness import break_weights, expect_refusal
from support.models import WORDS


@pytest.fixture
def ws(tiny_eval_dir, tmp_path):
    """A model with corrupt weights, text files, a FIFO, a copy of an executable and a folder."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(tiny_eval_dir, root / "model")
    break_weights(root / "model")
    (root / "corpus.txt").write_text(" ".join(WORDS * 200))
    (root / "factors.json").write_text("[1.0, 1.5]")
    shutil.copy(sys.executable, root / "program")
    os.mkfifo(root / "fifo")
    (root / "folder").mkdir()
    return root


EVAL = ["eval", "{ws}/model", "--tasks", "passkey", "--lengths", "300", "--depths", "0.5", "--out", "{ws}/out"]
FINETUNE = ["finetune", "{ws}/model", "--factor", "2", "--steps", "2", "--seq-len", "32", "--out", "{ws}/out"]
PATCH = ["patch", "--method", "yarn", "{ws}/model"]

BAD_BOUNDS = [
    ([*EVAL, "--samples", "1000000000"], "--samples 1000000000 is above ctxext's limit of 10000"),
    (["tune", "{ws}/model", "--target-length", "512", "--samples", "20000"], "--samples 20000 is above ctxext's"),
    ([*PATCH, "--target-length", str(2**63)], f"target length {2**63} is above ctxext's limit of 16777216 tokens"),
    ([*PATCH, "--factor", "1e12"], "factor 1000000000000.0 gives a target length of"),
    ([*EVAL, "--samples", "1", "--method", "yarn", "--factor", "1e9"], "gives a target length of"),
    ([*FINETUNE, "--data", "{ws}/corpus.txt", "--steps", "100000000"], "steps 100000000 is above ctxext's limit"),
    ([*FINETUNE, "--data", "{ws}/corpus.txt", "--batch-size", "200000"], "x seq_len 32 tokens per step is above"),
    ([*FINETUNE, "--data", "{ws}/corpus.txt", "--lora-r", "4096"], "lora_r 4096 is above the model's hidden size"),
]

SPECIAL_FILES = [
    ([*EVAL, "--tasks", "ppl", "--text-file", "{ws}/fifo"], "{ws}/fifo: is a named pipe (FIFO), not a text file"),
    ([*EVAL, "--tasks", "ppl", "--text-file", "/dev/null"], "/dev/null: is a character device, not a text file"),
    ([*EVAL, "--tasks", "ppl", "--text-file", "{ws}/folder"], "{ws}/folder: is a directory, not a text file"),
    ([*EVAL, "--tasks", "ppl", "--text-file", "{ws}/program"], "{ws}/program: holds binary data (a NUL byte"),
    ([*FINETUNE, "--data", "{ws}/fifo"], "data {ws}/fifo: is a named pipe (FIFO), not a data file"),
    ([*FINETUNE, "--data", "{ws}/program"], "data {ws}/program: holds binary data"),
    (["info", "{ws}/fifo"], "{ws}/fifo: is a named pipe (FIFO), not a model directory or a .gguf file"),
    (["info", "/dev/null"], "/dev/null: is a character device, not a model directory"),
    (["eval", "{ws}/fifo", "--out", "{ws}/out"], "{ws}/fifo: is a named pipe (FIFO), not a model directory"),
    (["patch", "--method", "longrope", "--factor", "2", "--long-factor", "@{ws}/fifo", "{ws}/model"], "is a named"),
    (["patch", "--method", "longrope", "--factor", "2", "--long-factor", "@{ws}/program", "{ws}/model"], "binary"),
]


@pytest.mark.parametrize("args,message", BAD_BOUNDS, ids=[f"bound-{i}" for i in range(len(BAD_BOUNDS))])
def test_a_count_or_length_beyond_its_bound_is_refused_before_the_model_loads(cli, ws, args, message):
    expect_refusal(cli, ws, args, message)


@pytest.mark.parametrize("args,message", SPECIAL_FILES, ids=[f"special-{i}" for i in range(len(SPECIAL_FILES))])
def test_a_special_file_where_a_file_is_expected_is_refused_for_what_it_is(cli, ws, args, message):
    expect_refusal(cli, ws, args, message)


def test_prompts_that_would_not_fit_in_memory_are_refused_before_the_model_loads(
    ws, monkeypatch, capsys, tiny_eval_dir
):
    """The samples bound alone allows 10000 prompts per task and length; what they need is checked against
    the memory available now (here: a machine that reports 256 KiB free)."""
    import ctxext.eval.runner as runner

    monkeypatch.setattr(validate, "available_memory", lambda: 2**18)
    monkeypatch.setattr(runner, "load_model", lambda config: pytest.fail("the model was loaded"))
    argv = [a.format(ws=ws) for a in EVAL] + ["--samples", "200"]
    argv[1] = str(tiny_eval_dir)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxext: error: the run's 200 prompts would need about") and err.count("\n") == 1, err
    assert "MiB available; ask for fewer --samples, tasks or lengths" in err
    assert not (ws / "out").exists()
