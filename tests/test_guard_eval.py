"""``ctxext eval`` and ``ctxext passkey`` refuse bad input with one line, before the model loads, files untouched.

Every bad input runs the real command line (``python -m ctxext.cli ...``) in its own process, in a
workspace of user files whose content and modes are compared before and after: nothing may change,
appear (run.json, a report, a staging folder) or disappear. The model directories of these
workspaces have a corrupt weights file, so a check that ran after the model load would fail with
the load's error instead of its own message: each refusal below happens before the model loads.

The commands run through the fork server of ``support/cli_harness.py`` (the session fixture ``cli``);
``test_the_fork_server_answers_as_python_dash_m_does`` checks that it answers as a real
``python -m ctxext.cli`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from ctxext.checkpoint.atomic import lock_directory
from ctxext.errors import CtxextError
from ctxext.eval.store import RecordStore, record_key

from support import bad_inputs
from support.cli_harness import OFFLINE, break_weights, expect_refusal, with_flags
from support.models import byte_tokenizer

CORPUS = "The quick brown fox jumps over the lazy dog. " * 30  # about 1350 byte-level tokens


@pytest.fixture(scope="session")
def eval_template(tiny_eval_dir, tmp_path_factory):
    """A workspace of user files: a model whose weights are corrupt (``model``), the same with good weights
    (``good``), broken variants, corpora, and folders that are not ctxext runs."""
    root = tmp_path_factory.mktemp("eval-template") / "ws"
    root.mkdir()
    shutil.copytree(tiny_eval_dir, root / "good")
    shutil.copytree(tiny_eval_dir, root / "model")
    break_weights(root / "model")
    (root / "corpus.txt").write_text(CORPUS)
    (root / "short.txt").write_text("A few words only.")
    (root / "empty.txt").write_text("")
    user = root / "user"  # a user's folder with a report of their own
    (user / "sub").mkdir(parents=True)
    (user / "report.md").write_text("# my own notes\n")
    (user / "report.json").write_text('{"mine": true}\n')
    (user / "data.csv").write_text("a,b\n1,2\n")
    os.chmod(user / "data.csv", 0o640)
    (user / "sub" / "keep.txt").write_text("keep me")
    for name, content in (("foreign", '{"name": "another tool", "steps": 3}'), ("corrupt", "{"), ("listed", "[1, 2]")):
        (root / name).mkdir()
        (root / name / "run.json").write_text(content)
        (root / name / "results.txt").write_text("someone else's results")
    (root / "records-only").mkdir()
    (root / "records-only" / "records.jsonl").write_text('{"method": "x"}\n')
    (root / "hidden-only").mkdir()
    (root / "hidden-only" / ".keep").write_text("")
    (root / "readonly").mkdir()
    (root / "not-a-dataset").mkdir()
    (root / "not-a-dataset" / "file.txt").write_text("text")
    gpt2 = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260, bos_token_id=1, eos_token_id=2)
    bad_inputs.plant_bad_models(root, byte_tokenizer(), gpt2, vocab_size=64)
    return root


@pytest.fixture
def ws(eval_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(eval_template, root, symlinks=True)
    os.chmod(root / "readonly", 0o555)
    yield root
    os.chmod(root / "readonly", 0o755)


def eval_args(*extra, model="{ws}/model", out="{ws}/out"):
    return [
        "eval",
        model,
        "--tasks",
        "passkey",
        "--lengths",
        "300",
        "--samples",
        "1",
        "--depths",
        "0.5",
        "--out",
        out,
        *extra,
    ]


# -- the bad inputs, one test per class ------------------------------------------------------------

BAD_LENGTHS = [
    (["--lengths", "99999999"], "length 99999999 is above ctxext's limit of 4194304 tokens (4m)"),
    (["--lengths", "5m"], "length 5242880 is above ctxext's limit"),
    (["--lengths", "300,99999999"], "length 99999999 is above ctxext's limit"),
    (["--lengths", "0"], "bad length '0': not a positive whole number of tokens"),
    (["--lengths", "1.5"], "bad length '1.5': not a positive whole number of tokens"),
    (["--lengths", "-512"], "bad length '-512'"),
    (["--lengths", "4q"], "bad length '4q'"),
    (["--lengths", "1e9"], "bad length '1e9'"),
    (["--lengths", ","], "no lengths given"),
]


@pytest.mark.parametrize("extra,message", BAD_LENGTHS)
def test_bad_or_absurd_length_is_refused_at_once(cli, ws, extra, message):
    result = expect_refusal(cli, ws, eval_args(*extra), message)
    assert result.seconds < 60  # no gigabytes of prompt are built first


TOO_SHORT = [
    (["--tasks", "passkey", "--lengths", "8"], "length 8 is too short for a passkey prompt"),
    (["--tasks", "passkey", "--lengths", "200"], "length 200 is too short for a passkey prompt"),
    (["--tasks", "passkey", "--lengths", "100,300"], "length 100 is too short for a passkey prompt"),
    (["--tasks", "niah_single_1", "--lengths", "400"], "length 400 is too short for niah_single_1"),
    (["--tasks", "niah_multikey_3", "--lengths", "500"], "length 500 is too short for niah_multikey_3"),
    (["--tasks", "niah_multiquery", "--lengths", "800"], "length 800 is too short for niah_multiquery"),
    (["--tasks", "vt", "--lengths", "800"], "length 800 is too short for vt"),
    (["--tasks", "cwe", "--lengths", "1500"], "length 1500 is too short for cwe"),
    (["--tasks", "fwe", "--lengths", "300"], "length 300 is too short for fwe"),
    (["--tasks", "ruler", "--lengths", "600"], "length 600 is too short for cwe"),
    (
        ["--tasks", "ppl", "--lengths", "300", "--text-file", "{ws}/corpus.txt", "--lm-eval-tasks", "ctxext_vt"],
        "length 300 is too short for vt",
    ),
]


@pytest.mark.parametrize("extra,message", TOO_SHORT)
def test_length_too_short_for_a_task_is_refused_before_the_model_loads(cli, ws, extra, message):
    if "--lm-eval-tasks" in extra:
        pytest.importorskip("lm_eval")
    args = eval_args()
    args = args[: args.index("--tasks")] + args[args.index("--samples") :] + extra  # the case's tasks and lengths
    expect_refusal(cli, ws, args, message)


BAD_EXTENSION = [
    (["--method", "yarn", "--factor", "1"], "factor must be greater than 1"),
    (["--method", "yarn", "--factor", "0.5"], "factor must be greater than 1"),
    (["--method", "yarn", "--factor", "-2"], "factor must be greater than 1"),
    (["--method", "yarn", "--factor", "nan"], "factor must be a finite number"),
    (["--method", "yarn", "--factor", "inf"], "factor must be a finite number"),
    (["--method", "yarn", "--factor", "two"], "argument --factor: invalid float value: 'two'"),
    (["--method", "yarn", "--target-length", "64"], "target length 64 must be above the original length 64"),
    (["--method", "yarn", "--target-length", "10"], "target length 10 must be above the original length 64"),
    (["--method", "dca", "--factor", "0.5"], "factor must be at least 1"),
    (["--method", "yarn"], "give --factor or --target-length for the extension methods"),
    (["--factor", "2"], "--factor / --target-length given without --method or --methods"),
    (["--target-length", "128"], "--factor / --target-length given without --method or --methods"),
    (["--method", "yarn", "--factor", "2", "--target-length", "128"], "not allowed with argument"),
]


@pytest.mark.parametrize("extra,message", BAD_EXTENSION)
def test_bad_factor_or_target_length_is_refused_before_the_model_loads(cli, ws, extra, message):
    expect_refusal(cli, ws, eval_args(*extra), message)


BAD_METHODS = [
    (["--method", "nope", "--factor", "2"], "unknown method 'nope'"),
    (["--methods", "yarn,nope", "--factor", "2"], "unknown method 'nope'"),
    (["--method", "unpatched", "--factor", "2"], "unknown method 'unpatched'"),
    (["--methods", "yarn,yarn", "--factor", "2"], "method 'yarn' is given twice (yarn, yarn)"),
    (["--methods", "pi,linear", "--factor", "2"], "method 'pi' is given twice (pi, linear)"),
    (["--method", "yarn", "--factor", "2", "--alpha", "2"], "--alpha: not a parameter of yarn"),
    (["--beta-fast", "16"], "method parameters given without --method or --methods"),
    (["--method", "yarn", "--factor", "2", "--beta-fast", "-1"], "yarn needs 0 < beta_slow < beta_fast"),
    (["--method", "yarn", "--factor", "2", "--beta-fast", "abc"], "argument --beta-fast: invalid float value"),
    (["--method", "longrope", "--factor", "2"], "longrope needs long_factor"),
    (["--method", "longrope", "--factor", "2", "--long-factor", "1,2,3"], "long_factor needs 8 numbers"),
    (["--method", "self-extend", "--factor", "2", "--window", "1000"], "window (1000) must be below the original"),
    (["--method", "string", "--factor", "2", "--local-value", "1000"], "local_value (1000) must be below"),
    (["--method", "dynamic-ntk", "--factor", "2", "--alpha", "0"], "dynamic-ntk alpha must be >= 1"),
    (["--method", "dca", "--factor", "2", "--chunk-size", "1000"], "need local_window < chunk_size"),
    (["--method", "ms-poe", "--factor", "2", "--min-ratio", "3"], "need 0 < min_ratio <= max_ratio"),
    (["--method", "ms-poe", "--factor", "2", "--ranking", "after"], "ranking must be one of pre_rope, post_rope"),
]


@pytest.mark.parametrize("extra,message", BAD_METHODS)
def test_bad_method_or_parameter_is_refused_before_the_model_loads(cli, ws, extra, message):
    expect_refusal(cli, ws, eval_args(*extra), message)


BAD_TASKS = [
    (["--tasks", "qa_1"], "unknown task 'qa_1'"),
    (["--tasks", "passkey,nope"], "unknown task 'nope'"),
    (["--tasks", "ppl;passkey"], "unknown task 'ppl;passkey'"),
    (["--tasks", ","], "no tasks given"),
    (["--lm-eval-tasks", "ctxext_nope"], "unknown lm-eval task(s): ctxext_nope"),
    (["--lm-eval-tasks", "ctxext_passkey,ctxext_bogus"], "unknown lm-eval task(s): ctxext_bogus"),
    (["--lm-eval-tasks", "ctxext_passkey,no_such_lm_eval_task"], "unknown lm-eval task(s): no_such_lm_eval_task"),
    (
        ["--lm-eval-tasks", "ctxext_passkey", "--lm-eval-limit", "0"],
        "--lm-eval-limit must be a whole number of at least 1",
    ),
]


@pytest.mark.parametrize("extra,message", BAD_TASKS)
def test_unknown_task_or_lm_eval_task_is_refused_before_the_model_loads(cli, ws, extra, message):
    if "--lm-eval-tasks" in extra:
        pytest.importorskip("lm_eval")
    expect_refusal(cli, ws, eval_args(*extra), message)


BAD_DEVICES = [
    (["--device", "cuda"], "--device cuda: no cuda device is available on this machine"),
    (["--device", "cuda:0"], "--device cuda:0: no cuda device is available on this machine"),
    (["--device", "mps"], "--device mps: no mps device is available on this machine"),
    (["--device", "xpu"], "--device xpu: no xpu device is available on this machine"),
    (["--device", "meta"], "--device meta holds no data"),
    (["--device", "gpu"], "--device 'gpu': not a torch device"),
    (["--device", "cuda:x"], "--device 'cuda:x': not a torch device"),
    (["--device", ""], "--device '': not a torch device"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
]


@pytest.mark.parametrize("extra,message", BAD_DEVICES)
def test_bad_device_or_dtype_is_refused_before_the_model_loads(cli, ws, extra, message):
    if "cuda" in extra[1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_refusal(cli, ws, eval_args(*extra), message)


BAD_NUMBERS = [
    (["--samples", "0"], "--samples must be a whole number of at least 1, got 0"),
    (["--samples", "-1"], "--samples must be a whole number of at least 1, got -1"),
    (["--samples", "x"], "argument --samples: invalid int value: 'x'"),
    (["--ppl-stride", "0"], "--ppl-stride must be a whole number of at least 1"),
    (["--ppl-windows", "0"], "--ppl-windows must be a whole number of at least 1"),
    (["--ppl-bucket", "-3"], "--ppl-bucket must be a whole number of at least 1"),
    (["--threshold", "101"], "--threshold is a score between 0 and 100, got 101.0"),
    (["--threshold", "-1"], "--threshold is a score between 0 and 100, got -1.0"),
    (["--threshold", "nan"], "--threshold is a score between 0 and 100, got nan"),
    (["--depths", "0,2"], "--depths must lie in [0, 1]"),
    (["--depths", "-0.5"], "--depths must lie in [0, 1]"),
    (["--depths", "nan"], "--depths must lie in [0, 1]"),
    (["--depths", "a,b"], "--depths must be comma-separated numbers in [0, 1] or 'random'"),
    (["--depths", ""], "--depths must be comma-separated numbers in [0, 1] or 'random'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
]


@pytest.mark.parametrize("extra,message", BAD_NUMBERS)
def test_bad_count_threshold_or_depth_is_refused_before_the_model_loads(cli, ws, extra, message):
    expect_refusal(cli, ws, eval_args(*extra), message)


BAD_CORPORA = [
    (["--text-file", "{ws}/missing.txt"], "{ws}/missing.txt: no such text file"),
    (["--text-file", "{ws}/user"], "{ws}/user: is a directory, not a text file"),
    (["--text-file", "{ws}/empty.txt"], "the corpus has 1 tokens, too few for a 300-token window"),
    (["--text-file", "{ws}/short.txt"], "the corpus has 18 tokens, too few for a 300-token window"),
    (["--text-dataset", "{ws}/missing"], "{ws}/missing: no such dataset directory"),
    (["--text-dataset", "{ws}/not-a-dataset"], "{ws}/not-a-dataset: not a dataset written by save_to_disk"),
    (["--text-file", "{ws}/corpus.txt", "--text-dataset", "{ws}/not-a-dataset"], "not allowed with argument"),
]


@pytest.mark.parametrize("extra,message", BAD_CORPORA)
def test_bad_perplexity_corpus_is_refused_before_the_model_loads(cli, ws, extra, message):
    if "--text-dataset" in extra and "--text-file" not in extra:
        pytest.importorskip("datasets")
    args = eval_args("--tasks", "ppl", *extra)
    expect_refusal(cli, ws, args, message)


NOT_OURS = [
    ("{ws}/user", "{ws}/user: the directory is not empty and holds no ctxext eval run (no run.json)"),
    ("{ws}/model", "{ws}/model: the directory is not empty and holds no ctxext eval run"),
    (".", "the directory is not empty and holds no ctxext eval run"),
    ("{ws}/records-only", "{ws}/records-only: the directory is not empty and holds no ctxext eval run"),
    ("{ws}/hidden-only", "{ws}/hidden-only: the directory is not empty and holds no ctxext eval run"),
    ("{ws}/foreign", "{ws}/foreign/run.json is not the settings file of a ctxext eval run"),
    ("{ws}/corrupt", "{ws}/corrupt/run.json is not the settings file of a ctxext eval run"),
    ("{ws}/listed", "{ws}/listed/run.json is not the settings file of a ctxext eval run"),
    ("{ws}/notes.txt", "{ws}/notes.txt: cannot write the report there (it is a file, not a directory)"),
    ("{ws}/notes.txt/report", "cannot write the report there ({ws}/notes.txt is not a directory)"),
    ("{ws}/readonly/report", "cannot write the report there ({ws}/readonly is read-only)"),
    ("{ws}/readonly", "{ws}/readonly: cannot write the report there (the directory is read-only or unreadable)"),
]


@pytest.mark.parametrize("out,message", NOT_OURS)
def test_out_directory_that_is_not_a_ctxext_run_is_refused(cli, ws, out, message):
    expect_refusal(cli, ws, eval_args(out=out), message)


BAD_MODELS = [*bad_inputs.BAD_MODELS, bad_inputs.wrong_vocabulary(64)]


@pytest.mark.parametrize("model,message", BAD_MODELS)
def test_bad_model_is_refused_before_its_weights_load(cli, ws, model, message):
    expect_refusal(cli, ws, eval_args(model=model), message)


BAD_PASSKEY = [
    (["--length", "0"], "length must be a positive whole number of tokens, got 0"),
    (["--length", "-1"], "length must be a positive whole number of tokens, got -1"),
    (["--length", "99999999"], "length 99999999 is above ctxext's limit of 4194304 tokens (4m)"),
    (["--length", "10"], "length 10 is too short for a passkey prompt"),
    (["--length", "200"], "length 200 is too short for a passkey prompt"),
    (["--length", "1.5k"], "argument --length: invalid int value: '1.5k'"),
    (["--depths", "0,1.5"], "--depths must lie in [0, 1]"),
    (["--depths", "nan"], "--depths must lie in [0, 1]"),
    (["--depths", "random"], "--depths must be comma-separated numbers in [0, 1], got 'random'"),
    (["--depths", ""], "--depths must be comma-separated numbers in [0, 1], got ''"),
    (["--device", "cuda"], "--device cuda: no cuda device is available on this machine"),
    (["--device", "cpu0"], "--device 'cpu0': not a torch device"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
]


@pytest.mark.parametrize("extra,message", BAD_PASSKEY)
def test_passkey_bad_input_is_refused_before_the_model_loads(cli, ws, extra, message):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_refusal(cli, ws, ["passkey", "{ws}/model", "--length", "300", *extra], message)


# -- an existing run: resume with the same settings, refuse other ones ---------------------------

RUN_ARGS = [
    "eval",
    "model",
    "--method",
    "yarn",
    "--factor",
    "2",
    "--tasks",
    "passkey,ppl",
    "--lengths",
    "300",
    "--samples",
    "1",
    "--depths",
    "0.5",
    "--text-file",
    "corpus.txt",
    "--out",
    "run",
]


@pytest.fixture(scope="session")
def run_template(cli, tiny_eval_dir, tmp_path_factory):
    """A finished run (relative paths, so that a copy of the workspace is the same run) whose model's weights
    were corrupted afterwards: a rerun that loaded the model would fail."""
    root = tmp_path_factory.mktemp("run-template") / "ws"
    root.mkdir()
    shutil.copytree(tiny_eval_dir, root / "model")
    (root / "corpus.txt").write_text(CORPUS)
    (root / "other.txt").write_text(CORPUS.upper())
    result = cli.run(*RUN_ARGS, cwd=root)
    assert result.rc == 0, result.stderr
    assert sorted(p.name for p in (root / "run").iterdir()) == [
        "heatmap_passkey.png",
        "perplexity.png",
        "records.jsonl",
        "report.json",
        "report.md",
        "run.json",
    ]
    shutil.copytree(root / "model", root / "good")
    break_weights(root / "model")
    return root


@pytest.fixture
def run_ws(run_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(run_template, root)
    return root


OTHER_SETTINGS = [
    ({"seed": "1"}, "holds a run with other settings (seed)"),
    ({"factor": "3"}, "holds a run with other settings (factor)"),
    ({"dtype": "bfloat16"}, "holds a run with other settings (dtype)"),
    ({"text_file": "other.txt"}, "holds a run with other settings (text_file)"),
    ({"ppl_stride": "128"}, "holds a run with other settings (ppl_stride)"),
    ({"depths": "0.25"}, "holds a run with other settings (depths)"),
    ({"beta_fast": "16"}, "holds a run with other settings (params)"),
    ({"model": "good"}, "holds a run with other settings (model)"),
]


@pytest.mark.parametrize("changes,message", OTHER_SETTINGS)
def test_a_run_with_other_settings_in_the_same_out_is_refused(cli, run_ws, changes, message):
    args = list(RUN_ARGS)
    if "model" in changes:
        args[1] = changes.pop("model")
    expect_refusal(cli, run_ws, with_flags(args, **changes), message)


def test_a_damaged_run_log_is_refused_with_one_line(cli, run_ws):
    records = run_ws / "run" / "records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    expect_refusal(cli, run_ws, RUN_ARGS, "run/records.jsonl:2: not a ctxext eval record")


@pytest.mark.parametrize("out", ["run", "empty"])
def test_an_out_another_run_is_writing_is_refused(cli, run_ws, out):
    """Two evals into one --out at once: the second is refused before its model loads (the weights here are
    corrupt), whether the first is resuming a run or has just started in an empty folder."""
    (run_ws / "empty").mkdir()
    held = lock_directory(run_ws / out)
    try:
        args = list(RUN_ARGS)
        args[args.index("--out") + 1] = f"{{ws}}/{out}"
        expect_refusal(cli, run_ws, args, f"{{ws}}/{out}: another ctxext command is writing here")
    finally:
        os.close(held)


def test_two_runs_that_both_found_a_new_out_cannot_both_write(tmp_path):
    """The race the check at the start cannot see: both runs found no --out; the first to write takes the
    folder, the second is refused at its first record, and a later run resumes the first's records."""
    settings, out = {"model": "m", "seed": 0}, tmp_path / "out"
    record = {"method": None, "task": "passkey", "length": 300, "sample": 0}
    with RecordStore(out, settings) as first, RecordStore(out, settings) as second:
        first.add(record)
        with pytest.raises(CtxextError, match="another ctxext command is writing here"):
            second.add({**record, "sample": 1})
    assert (out / "records.jsonl").read_text().count("\n") == 1
    with RecordStore(out, settings) as later:
        assert record_key(record) in later and len(later.records) == 1


def test_the_same_settings_resume_and_add_work(cli, run_ws):
    """The same settings with more samples: the run resumes, the old records are kept, only the new ones added."""
    run = run_ws / "run"
    before = (run / "records.jsonl").read_text().splitlines()
    settings = (run / "run.json").read_bytes()
    (run_ws / "model" / "model.safetensors").write_bytes((run_ws / "good" / "model.safetensors").read_bytes())
    result = cli.run(*with_flags(RUN_ARGS, samples="2"), cwd=run_ws)
    assert result.rc == 0, result.stderr
    after = (run / "records.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == len(before) + 2  # one more passkey sample per method
    assert (run / "run.json").read_bytes() == settings


def test_a_refused_run_leaves_nothing_that_blocks_the_corrected_rerun(cli, ws):
    """The first command is refused after the --out checks (its prompts do not fit) with seed 1; the corrected
    command, seed 0, writes into the same --out: a run.json written by the refused run would refuse it."""
    expect_refusal(
        cli,
        ws,
        eval_args("--seed", "1", "--lengths", "100", model="{ws}/good"),
        "length 100 is too short for a passkey prompt",
    )
    result = cli.run(*[a.format(ws=ws) for a in eval_args(model="{ws}/good")], cwd=ws)
    assert result.rc == 0, result.stderr
    assert json.loads((ws / "out" / "run.json").read_text())["seed"] == 0


def test_a_model_that_fails_to_load_leaves_nothing_behind(cli, ws):
    """The control of every test above: valid flags on the corrupt weights get the load's own one-line error, so
    the refusals above happened before the load; and the failed run leaves no --out, no run.json."""
    result = expect_refusal(
        cli, ws, eval_args("--method", "yarn", "--factor", "2"), "{ws}/model: cannot load the model"
    )
    assert "header" in result.stderr  # safetensors' own complaint about the corrupt file
    expect_refusal(cli, ws, ["passkey", "{ws}/model", "--length", "300"], "{ws}/model: cannot load the model")


def test_an_empty_out_directory_is_used(cli, ws):
    (ws / "empty-out").mkdir()
    result = cli.run(*[a.format(ws=ws) for a in eval_args(model="{ws}/good", out="{ws}/empty-out")], cwd=ws)
    assert result.rc == 0, result.stderr
    assert (ws / "empty-out" / "run.json").is_file() and (ws / "empty-out" / "report.md").is_file()


# -- the report is written atomically --------------------------------------------------------------


def test_an_interrupted_report_leaves_the_previous_files_whole(run_ws, monkeypatch, capsys):
    """Ctrl-C while report.json is replaced: the previous report.json stays whole, no temporary file is left; a
    report written afresh goes through atomic_write file by file (report.md, report.json, the pictures)."""
    import ctxext.checkpoint.atomic
    from ctxext.cli import main

    torch.set_num_threads(1)
    monkeypatch.chdir(run_ws)
    (run_ws / "model" / "model.safetensors").write_bytes((run_ws / "good" / "model.safetensors").read_bytes())
    run = run_ws / "run"
    previous = {p.name: p.read_bytes() for p in run.iterdir()}
    written = []
    real_replace = os.replace

    def replace(source, target):
        written.append(Path(target).name)
        if Path(target).name == "report.json":
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(ctxext.checkpoint.atomic.os, "replace", replace)
    assert main(RUN_ARGS[:]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {p.name for p in run.iterdir()} == set(previous)  # no temporary file left
    assert (run / "report.json").read_bytes() == previous["report.json"]
    assert set(written) >= {"heatmap_passkey.png", "perplexity.png", "report.md", "report.json"}
    monkeypatch.setattr(ctxext.checkpoint.atomic.os, "replace", real_replace)
    assert main(RUN_ARGS[:]) == 0
    assert json.loads((run / "report.json").read_text())["records"]


# -- the fork server is the command line ------------------------------------------------------------


def test_the_fork_server_answers_as_python_dash_m_does(cli, ws):
    for args in (
        eval_args("--lengths", "99999999"),
        eval_args(out="{ws}/user"),
        ["passkey", "{ws}/model", "--length", "10"],
    ):
        args = [a.format(ws=ws) for a in args]
        real = subprocess.run(
            [sys.executable, "-m", "ctxext.cli", *args],
            capture_output=True,
            text=True,
            cwd=ws,
            env={**os.environ, **OFFLINE},
        )
        served = cli.run(*args, cwd=ws)
        assert (served.rc, served.stdout, served.stderr) == (real.returncode, real.stdout, real.stderr)
        assert real.returncode == 2 and real.stderr.count("\n") == 1


def test_in_process_nothing_loads_the_model_before_the_checks(tiny_eval_dir, tmp_path, monkeypatch, capsys):
    """The same guarantee in process: with the model loader replaced by a failure, bad input is refused."""
    from ctxext.cli import main
    from ctxext.eval import runner

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before every check had passed")

    monkeypatch.setattr(runner, "load_on_device", no_load)
    for extra, message in [BAD_LENGTHS[0], TOO_SHORT[0], BAD_EXTENSION[0], BAD_DEVICES[0], BAD_METHODS[5]]:
        if "cuda" in extra and torch.cuda.is_available():
            continue
        code = main(["eval", str(tiny_eval_dir), "--out", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert main(["passkey", str(tiny_eval_dir), "--length", "10"]) == 2
    assert "too short" in capsys.readouterr().err


def _count_bad_inputs() -> int:
    return (
        len(BAD_LENGTHS)
        + len(TOO_SHORT)
        + len(BAD_EXTENSION)
        + len(BAD_METHODS)
        + len(BAD_TASKS)
        + len(BAD_DEVICES)
        + len(BAD_NUMBERS)
        + len(BAD_CORPORA)
        + len(NOT_OURS)
        + len(BAD_MODELS)
        + len(BAD_PASSKEY)
        + len(OTHER_SETTINGS)
        + 1
    )  # + the damaged run log


def test_the_bad_inputs_are_distinct():
    cases = [
        tuple(map(str, extra))
        for table in (
            BAD_LENGTHS,
            TOO_SHORT,
            BAD_EXTENSION,
            BAD_METHODS,
            BAD_TASKS,
            BAD_DEVICES,
            BAD_NUMBERS,
            BAD_CORPORA,
        )
        for extra, _ in table
    ]
    assert len(set(cases)) == len(cases)
    assert len({out for out, _ in NOT_OURS}) == len(NOT_OURS) and len({m for m, _ in BAD_MODELS}) == len(BAD_MODELS)
    assert _count_bad_inputs() >= 120
