"""Our lm-eval task configs load from the shipped include path with networking disabled, report
one metric per length and the answer prefix as gen_prefix, and ``ctxext eval --lm-eval-tasks``
runs them on the in-memory model."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from ctxext.cli import main
from ctxext.eval.constants import DEFAULT_DEPTHS
from ctxext.eval.lm_eval_bridge import include_path
from ctxext.eval.tasks import make_sample

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


def _manager(eval_dir, lengths: list[int], samples: int):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(include_path()),
        include_defaults=False,
        metadata={"tokenizer": str(eval_dir), "max_seq_lengths": lengths, "num_samples": samples},
    )


def test_tasks_load_from_the_include_path_offline(no_network, tiny_eval_dir):
    manager = _manager(tiny_eval_dir, [1024, 2048], 2)
    assert {"ctxext_passkey", "ctxext_niah_single_1", "ctxext_vt", "ctxext_ruler"} <= set(manager.all_tasks)
    tasks = manager.load(["ctxext_passkey", "ctxext_vt"])["tasks"]
    docs = list(tasks["ctxext_passkey"].test_docs())
    assert [d["length"] for d in docs] == [1024, 1024, 2048, 2048]
    assert all(
        d["outputs"][0] in d["input"]
        and d["input"].endswith("\nWhat is the pass key?")
        and d["gen_prefix"] == "The pass key is"
        for d in docs
    )
    vt = list(tasks["ctxext_vt"].test_docs())
    assert len(vt) == 4 and all(f"VAR {d['outputs'][0]} = " in d["input"] for d in vt)
    assert tasks["ctxext_vt"].config.generation_kwargs["max_gen_toks"] == 30


def test_each_length_of_the_metadata_is_a_metric(no_network, tiny_eval_dir):
    loaded = _manager(tiny_eval_dir, [1024, 2048], 1).load(["ctxext_passkey"])
    task = loaded["tasks"]["ctxext_passkey"]
    assert list(task.aggregation()) == ["1024", "2048", "score"]
    assert task.higher_is_better() == {"1024": True, "2048": True, "score": True}


@pytest.mark.parametrize("lengths", ["4k", [], [0, 4096]])
def test_bad_max_seq_lengths_is_a_one_line_error(no_network, tiny_eval_dir, lengths):
    with pytest.raises(
        ValueError, match=r"^max_seq_lengths must be positive token lengths, e\.g\. \[4096, 8192\]; got"
    ):
        _manager(tiny_eval_dir, lengths, 1).load(["ctxext_passkey"])


def test_a_length_metric_averages_only_the_docs_of_that_length(no_network, tiny_eval_dir):
    task = _manager(tiny_eval_dir, [1024, 2048], 1).load(["ctxext_passkey"])["tasks"]["ctxext_passkey"]
    docs = [{"metric": "first_integer", "outputs": ["12345"], "length": length} for length in (1024, 1024, 2048)]
    per_doc = [task.process_results(doc, [answer]) for doc, answer in zip(docs, [" 12345.", " 54321", "12345"])]
    assert per_doc[0]["1024"] == 100.0 and per_doc[0]["score"] == 100.0 and math.isnan(per_doc[0]["2048"])
    aggregated = {name: aggregate([r[name] for r in per_doc]) for name, aggregate in task.aggregation().items()}
    assert aggregated["1024"] == 50.0 and aggregated["2048"] == 100.0
    assert aggregated["score"] == pytest.approx(200 / 3)
    assert math.isnan(task.aggregation()["2048"]([r["2048"] for r in per_doc[:2]]))  # no doc of that length


def test_the_group_averages_each_power_of_two_length_and_the_score(no_network, tiny_eval_dir):
    group = _manager(tiny_eval_dir, [2048], 1).load(["ctxext_ruler"])["groups"]["ctxext_ruler"]
    names = [metric.metric for metric in group.aggregate_metric_list]
    assert names == [str(2**k) for k in range(9, 21)] + ["score"]
    assert not any(metric.weight_by_size for metric in group.aggregate_metric_list)


def test_the_answer_prefix_is_gen_prefix_and_the_joined_prompt_is_the_runners(no_network, tiny_eval_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_eval_dir)
    tasks = _manager(tiny_eval_dir, [2048], 1).load(["ctxext_passkey", "ctxext_ruler"])["tasks"]
    assert len(tasks) == 12
    for name, task in tasks.items():
        doc = next(iter(task.test_docs()))
        sample = make_sample(name.removeprefix("ctxext_"), tokenizer, 2048, 0, 0, DEFAULT_DEPTHS)
        prefix = task.doc_to_prefix(doc)
        assert prefix == sample.answer_prefix and doc["input"] == sample.question
        assert task.fewshot_context(doc, 0, gen_prefix=prefix) == sample.prompt
        turns = task.fewshot_context(
            doc,
            0,
            apply_chat_template=True,
            gen_prefix=prefix,
            chat_template=lambda messages, add_generation_prompt: messages,
        )
        assert turns == [{"role": "user", "content": sample.question}, {"role": "assistant", "content": prefix}]


def test_ctxext_eval_runs_lm_eval_tasks_on_the_extended_model(no_network, tiny_eval_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                str(tiny_eval_dir),
                "--method",
                "yarn",
                "--factor",
                "2",
                "--tasks",
                "passkey",
                "--lengths",
                "512",
                "--samples",
                "1",
                "--lm-eval-tasks",
                "ctxext_passkey",
                "--lm-eval-limit",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "report.json").read_text())
    assert set(data["lm_eval"]) == {"unpatched", "yarn"}
    passkey = data["lm_eval"]["yarn"]["ctxext_passkey"]
    assert passkey["score"] in (0.0, 100.0) and passkey["512"] == passkey["score"]
    assert "## lm-eval tasks" in (out / "report.md").read_text()
    logged = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["max_length"] for r in logged if r["task"] == "lm-eval"] == [512, 512]


def test_the_report_lists_a_tasks_lengths_in_order_then_its_score():
    from ctxext.eval.report import _lm_eval_section

    lines = _lm_eval_section(
        {"unpatched": {"ctxext_passkey": {"score": 50.0, "16384": 0.0, "4096": 100.0}}}, ["unpatched"]
    )
    assert [line.split("|")[1].strip() for line in lines[5:]] == [
        "ctxext_passkey 4096",
        "ctxext_passkey 16384",
        "ctxext_passkey score",
    ]


def test_lm_eval_command_line_reports_each_length(tiny_eval_dir, tmp_path):
    env = {**os.environ, **OFFLINE}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tiny_eval_dir}",
            "--device",
            "cpu",
            "--include_path",
            str(include_path()),
            "--tasks",
            "ctxext_passkey",
            "--metadata",
            json.dumps({"max_seq_lengths": [512, 1024], "num_samples": 1}),
            "--output_path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.replace(" ", "").split("|") for line in result.stdout.splitlines()]
    assert {row[5] for row in rows if len(row) > 5} >= {"512", "1024", "score"}
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    passkey = json.loads(results_file.read_text())["results"]["ctxext_passkey"]
    assert passkey["512,none"] in (0.0, 100.0) and passkey["1024,none"] in (0.0, 100.0)
    assert passkey["score,none"] == (passkey["512,none"] + passkey["1024,none"]) / 2


def test_missing_lm_eval_is_a_clear_error(monkeypatch, tiny_eval_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert (
        main(
            [
                "eval",
                str(tiny_eval_dir),
                "--lengths",
                "512",
                "--samples",
                "1",
                "--lm-eval-tasks",
                "ctxext_passkey",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "needs lm-eval: pip install 'ctxext[eval]'" in capsys.readouterr().err


def _yaml_budget(path) -> tuple[str, int]:
    """(our task, max_gen_toks) of a shipped lm-eval YAML, read as text (its !function tags need lm-eval)."""
    import re

    text = path.read_text()
    task = re.search(r"dataset_kwargs:\n\s+task: (\S+)", text).group(1)
    return task, int(re.search(r"max_gen_toks: (\d+)", text).group(1))


def test_the_lm_eval_yamls_generation_budgets_are_the_task_registrys():
    from pathlib import Path

    from ctxext.eval.lm_eval_bridge import include_path
    from ctxext.eval.tasks import TASKS

    yamls = [p for p in Path(include_path()).glob("ctxext_*.yaml") if "dataset_kwargs:" in p.read_text()]
    budgets = dict(_yaml_budget(p) for p in yamls)
    assert set(budgets) == {name for name, task in TASKS.items() if task.generates}
    assert budgets == {name: TASKS[name].max_new_tokens for name in budgets}
