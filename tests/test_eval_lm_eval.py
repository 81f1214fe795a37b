"""Our lm-eval task configs load from the shipped include path with networking disabled, and
``ctxext eval --lm-eval-tasks`` runs them on the in-memory model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ctxext.cli import main
from ctxext.eval.lm_eval_bridge import include_path

pytest.importorskip("lm_eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture
def no_network(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)

    def refuse(*args, **kwargs):
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tasks_load_from_the_include_path_offline(no_network, tiny_eval_dir):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path()), include_defaults=False,
                          metadata={"tokenizer": str(tiny_eval_dir), "max_seq_lengths": [1024, 2048], "num_samples": 2})
    assert {"ctxext_passkey", "ctxext_niah_single_1", "ctxext_vt", "ctxext_ruler"} <= set(manager.all_tasks)
    tasks = manager.load(["ctxext_passkey", "ctxext_vt"])["tasks"]
    docs = list(tasks["ctxext_passkey"].test_docs())
    assert [d["length"] for d in docs] == [1024, 1024, 2048, 2048]
    assert all(d["outputs"][0] in d["input"] and d["input"].endswith("The pass key is") for d in docs)
    assert tasks["ctxext_passkey"].process_results(docs[0], [f" {docs[0]['outputs'][0]}."]) == {"score": 100.0}
    vt = list(tasks["ctxext_vt"].test_docs())
    assert len(vt) == 4 and all(f"VAR {d['outputs'][0]} = " in d["input"] for d in vt)
    assert tasks["ctxext_vt"].config.generation_kwargs["max_gen_toks"] == 30


def test_ctxext_eval_runs_lm_eval_tasks_on_the_extended_model(no_network, tiny_eval_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "report"
    assert main(["eval", str(tiny_eval_dir), "--method", "yarn", "--factor", "2", "--tasks", "passkey",
                 "--lengths", "512", "--samples", "1", "--lm-eval-tasks", "ctxext_passkey", "--lm-eval-limit", "1",
                 "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert set(data["lm_eval"]) == {"unpatched", "yarn"}
    assert data["lm_eval"]["yarn"]["ctxext_passkey"]["score"] in (0.0, 100.0)
    assert "## lm-eval tasks" in (out / "report.md").read_text()
    logged = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["max_length"] for r in logged if r["task"] == "lm-eval"] == [512, 512]


def test_lm_eval_command_line_with_our_include_path(tiny_eval_dir, tmp_path):
    env = {**os.environ, **OFFLINE}
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_eval_dir}",
         "--device", "cpu", "--include_path", str(include_path()), "--tasks", "ctxext_passkey", "--limit", "1",
         "--metadata", json.dumps({"max_seq_lengths": [512], "num_samples": 1})],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ctxext_passkey" in result.stdout and "score" in result.stdout


def test_missing_lm_eval_is_a_clear_error(monkeypatch, tiny_eval_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["eval", str(tiny_eval_dir), "--lengths", "512", "--samples", "1", "--lm-eval-tasks", "ctxext_passkey",
                 "--out", str(tmp_path / "out")]) == 2
    assert "needs lm-eval: pip install 'ctxext[eval]'" in capsys.readouterr().err
