"""``ctxext eval --backend vllm|llama.cpp`` without the engines: what each engine refuses (before any model work),
the worker protocol against a stand-in vLLM (``support/fake_engine``), records of two backends in one --out and
the report that puts them side by side. The real engines: ``test_engines.py`` (marker ``engines``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.eval import runner
from ctxext.eval.agreement import compare
from ctxext.eval.constants import LM_EVAL
from ctxext.eval.engine_process import EngineProcess
from ctxext.eval.store import RECORDS

from support.cli_harness import assert_refused_before_loading

FAKE_ENGINE = Path(__file__).resolve().parent / "support" / "fake_engine"
ARGS = ["--method", "yarn", "--factor", "2", "--tasks", "passkey,ppl", "--lengths", "1k", "--samples", "2"]
ARGS += ["--depths", "0,1", "--ppl-bucket", "512"]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The worker's Python (this one) imports the stand-in vLLM."""
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_ENGINE}:{Path(__file__).resolve().parent.parent}")
    return sys.executable


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- what an engine refuses, before the model loads ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "sglang"], "unknown backend 'sglang'; choose from: transformers, vllm, llama.cpp"),
        (["--backend", "vllm", "--method", "dca"], "--backend vllm cannot run 'dca': attention-level method 'dca'"),
        (["--backend", "vllm", "--method", "rerope"], "--backend vllm cannot run 'rerope'"),
        (["--backend", "vllm", "--method", "dynamic-ntk"], "vLLM's 'dynamic' is a fixed NTK base"),
        (["--backend", "vllm", "--method", "dynamic-yarn"], "vLLM has no rope type 'ctxext_dynamic_yarn'"),
        (["--backend", "llama.cpp", "--method", "yarn"], "--backend llama.cpp runs a .gguf file and"),
        (["--backend", "vllm", "--method", "yarn", "--device", "meta"], "the engine picks its own device"),
        (["--backend", "llama.cpp", "--dtype", "bfloat16"], "computes in the GGUF file's own tensor types"),
        (["--backend", "llama.cpp", "--lm-eval-tasks", "x"], "run on the transformers and vllm backends"),
        (["--backend", "vllm", "--method", "yarn", "--engine-python", "/nonexistent"], "/nonexistent: no such file"),
        (["--backend", "vllm", "--method", "yarn", "--engine-python", sys.executable], "cannot import vllm"),
    ],
)
def test_an_engine_refuses_what_it_cannot_run_before_the_model_loads(
    tiny_eval_dir, tmp_path, monkeypatch, capsys, extra, message
):
    argv = ["eval", str(tiny_eval_dir), "--factor", "2", "--out", str(tmp_path / "out"), *extra]
    if "--method" not in extra:
        argv += ["--method", "yarn"]
    assert_refused_before_loading(monkeypatch, capsys, runner, argv, tmp_path / "out", message)


def test_an_engine_refuses_a_patched_checkpoint(tiny_eval_dir, tmp_path, monkeypatch, capsys):
    assert main(["patch", "--method", "pi", "--factor", "2", "--output", str(tmp_path / "pi"), str(tiny_eval_dir)]) == 0
    capsys.readouterr()
    argv = ["eval", str(tmp_path / "pi"), "--backend", "vllm", "--out", str(tmp_path / "out")]
    assert_refused_before_loading(
        monkeypatch, capsys, runner, argv, tmp_path / "out", "compares the unpatched checkpoint with each method"
    )


@pytest.mark.real
@pytest.mark.parametrize(
    "method, message",
    [
        ("dca", "'dca' changes attention itself"),
        ("dynamic-ntk", "'dynamic-ntk' cannot be written into GGUF metadata: llama.cpp has no dynamic rope scaling"),
        ("longrope", "'longrope' cannot be written into GGUF metadata: llama.cpp takes longrope from extra"),
    ],
)
def test_llama_cpp_refuses_what_a_gguf_cannot_hold(tmp_path, monkeypatch, capsys, method, message):
    argv = ["eval", "smollm2", "--backend", "llama.cpp", "--method", method, "--factor", "2"]
    argv += ["--long-factor", "1"] if method == "longrope" else []
    argv += ["--out", str(tmp_path / "out")]
    assert_refused_before_loading(
        monkeypatch, capsys, runner, argv, tmp_path / "out", f"--backend llama.cpp cannot run '{method}': {message}"
    )


@pytest.mark.real
def test_llama_cpp_runs_self_extend_as_its_group_attention():
    from ctxext.checkpoint.locations import resolve_model_path
    from ctxext.eval.backend import Setup
    from ctxext.eval.engines import check_engine_run
    from ctxext.model.loading import model_config

    location = resolve_model_path("smollm2")
    setups = {"unpatched": Setup(None), "self-extend": Setup("self-extend", {"window": 2048}, 2.0)}
    found = check_engine_run("llama.cpp", location, model_config(location), setups)
    # G = 3 is the smallest with (8192 - W) G + W >= 16384; W rounded down to a multiple of G
    assert found["self-extend"].group_attention == (3, 2046)
    assert found["unpatched"].group_attention is None


# -- the worker protocol, against the stand-in vLLM -----------------------------------------------------------


def _load(python, tmp_path, model) -> EngineProcess:
    process = EngineProcess(python, "vllm", tmp_path / "engine.log")
    answer = process.ask({"op": "load", "engine": "vllm", "model": str(model), "n_ctx": 64, "dtype": "float32"})
    assert answer == {"ok": True, "version": "vllm 0.0.fake"}
    return process


def test_the_worker_answers_token_ids_and_keeps_the_engines_prints_out_of_its_answers(
    fake_vllm, tiny_eval_dir, tmp_path
):
    process = _load(fake_vllm, tmp_path, tiny_eval_dir)
    try:
        answer = process.ask({"op": "generate", "ids": [5, 9, 20], "max_tokens": 4, "stop": []})
        assert answer["ids"] == [19, 18, 17, 16]
        assert process.ask({"op": "generate", "ids": [20], "max_tokens": 9, "stop": [18]})["ids"] == [19, 18]
        assert process.ask({"op": "nll", "ids": [7, 8, 9]})["nll"] == [0.01, 0.02]
        with pytest.raises(CtxextError, match=r"^vllm: ValueError: 60 prompt ids \+ 9 do not fit in 64$"):
            process.ask({"op": "generate", "ids": [3] * 60, "max_tokens": 9, "stop": []})
        with pytest.raises(CtxextError, match="unknown request 'sing'"):
            process.ask({"op": "sing"})
        assert process.ask({"op": "generate", "ids": [4], "max_tokens": 1, "stop": []})["ids"] == [3]  # still there
    finally:
        process.close()
    assert process.process.returncode == 0
    assert f"fake vLLM: loading {tiny_eval_dir}" in (tmp_path / "engine.log").read_text()


def test_a_failed_load_and_a_dead_engine_are_one_line(fake_vllm, tmp_path):
    process = EngineProcess(fake_vllm, "vllm", tmp_path / "engine.log")
    with pytest.raises(CtxextError, match=f"^vllm: ValueError: {tmp_path} has no config.json$"):
        process.ask({"op": "load", "engine": "vllm", "model": str(tmp_path), "n_ctx": 64, "dtype": "float32"})
    process.close()
    (tmp_path / "crash").mkdir()
    process = EngineProcess(fake_vllm, "vllm", tmp_path / "engine.log")
    with pytest.raises(CtxextError, match=r"^the vllm worker stopped \(exit status 3\): fake vLLM: out of memory$"):
        process.ask({"op": "load", "engine": "vllm", "model": str(tmp_path / "crash"), "n_ctx": 64, "dtype": "x"})


# -- two backends into one --out: records, resume, the report side by side -----------------------------------


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]


def test_an_engine_run_beside_transformers_in_one_out(fake_vllm, tiny_eval_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (
        main(["eval", str(tiny_eval_dir), *ARGS, "--backend", "vllm", "--engine-python", fake_vllm, "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    records = _records(out)
    units = 2 * (2 + 1)  # (unpatched, yarn) x (2 passkey prompts + 1 perplexity window)
    assert [r["backend"] for r in records] == ["transformers"] * units + ["vllm"] * units
    engine = [r for r in records if r["backend"] == "vllm"]
    assert all(not r["correct"] for r in engine if r["task"] == "passkey")
    windows = [r for r in engine if r["task"] == "ppl"]
    assert [w["n_scored"] for w in windows] == [1024, 1024]
    assert windows[0]["nll_sum"] == pytest.approx(sum(k / 100 for k in range(1, 1025)))  # the stand-in's rule

    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["backend"] == "vllm" and report["meta"]["engine"] == "vllm 0.0.fake"
    assert [r["backend"] for r in report["records"]] == ["vllm"] * units
    rows = {(r["method"], r["task"]): r for r in report["backends"]}
    assert set(rows) == {("unpatched", "passkey"), ("yarn", "passkey"), ("unpatched", "ppl"), ("yarn", "ppl")}
    assert rows["yarn", "ppl"]["ppl"]["vllm"] == pytest.approx(torch.tensor(sum(range(1, 1025)) / 102400).exp())
    text = (out / "report.md").read_text()
    assert "| backend | vllm (vllm 0.0.fake) |" in text and "## Backends side by side" in text
    for row in report["backends"]:
        if row["task"] == "passkey":
            assert row["backends"] == ["vllm", "transformers"] and row["prompts"] == 2
            differs = row["differing"] > 0.2
            assert row["differs"] == differs
            said = f"vllm and transformers differ on {row['method']} passkey at 1024 tokens: "
            assert (said in printed) == differs

    # each backend resumes its own records only
    assert (
        main(["eval", str(tiny_eval_dir), *ARGS, "--backend", "vllm", "--engine-python", fake_vllm, "--out", str(out)])
        == 0
    )
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--out", str(out)]) == 0
    assert len(_records(out)) == 2 * units
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["backend"] == "transformers" and {r["backends"][1] for r in report["backends"]} == {"vllm"}


def test_lm_eval_tasks_run_lm_evals_vllm_model_on_each_patched_directory(fake_vllm, tiny_eval_dir, tmp_path):
    """``--lm-eval-tasks`` on vLLM: each configuration's checkpoint (unpatched, yarn x2) goes to lm-eval's own
    ``vllm`` model (the stand-in lm-eval reports what it was given), its metrics logged as on transformers."""
    out = tmp_path / "report"
    lm_eval = ["--lm-eval-tasks", "ctxext_passkey,ctxext_niah_single_2", "--lm-eval-limit", "3"]
    argv = ["eval", str(tiny_eval_dir), *ARGS, "--backend", "vllm", "--engine-python", fake_vllm, *lm_eval]
    assert main([*argv, "--out", str(out)]) == 0
    found = {r["method"]: r for r in _records(out) if r["task"] == LM_EVAL}
    assert set(found) == {"unpatched", "yarn"}
    for method, factor in (("unpatched", 1.0), ("yarn", 2.0)):
        record = found[method]
        assert record["backend"] == "vllm" and record["max_length"] == 1024
        for task in ("ctxext_passkey", "ctxext_niah_single_2"):
            assert record["results"][task] == {
                "max_model_len": 1024,
                "factor": factor,
                "limit": 3,
                "found": 1.0,
                "same_tokenizer": 1.0,
            }
    assert "## lm-eval" in (out / "report.md").read_text()
    assert main([*argv, "--out", str(out)]) == 0  # resumed: nothing run twice
    assert len([r for r in _records(out) if r["task"] == LM_EVAL]) == 2


# -- the side-by-side numbers, from records alone -------------------------------------------------------------


def _passkey(backend_scores: list[float], method="yarn") -> list[dict]:
    return [
        {"method": method, "task": "passkey", "length": 4096, "sample": i, "score": s, "seconds": 2.0}
        for i, s in enumerate(backend_scores)
    ]


@pytest.mark.parametrize("differing, differs", [(0, False), (1, False), (2, True)])
def test_a_cell_differs_when_more_than_one_prompt_in_ten_is_scored_differently(differing, differs):
    mine = _passkey([100.0] * 10)
    theirs = {(r["method"], r["task"], r["length"], r["sample"]): dict(r) for r in _passkey([100.0] * 10)}
    for i in range(differing):
        theirs["yarn", "passkey", 4096, i]["score"] = 0.0
    (row,) = compare("vllm", mine, {"transformers": theirs})
    assert (row["prompts"], row["differing"], row["differs"]) == (10, differing, differs)
    assert row["score"] == {"vllm": 100.0, "transformers": 100.0 - 10 * differing}


def test_only_prompts_both_backends_ran_are_compared():
    mine = _passkey([100.0] * 4) + _passkey([0.0], method="pi")
    theirs = {(r["method"], r["task"], r["length"], r["sample"]): r for r in _passkey([0.0] * 2)}
    (row,) = compare("llama.cpp", mine, {"transformers": theirs})
    assert (row["method"], row["prompts"], row["differing"], row["differs"]) == ("yarn", 2, 2, True)
    assert compare("llama.cpp", mine, {}) == []
