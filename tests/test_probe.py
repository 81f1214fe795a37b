"""``ctxext probe``: the ladder, E by the eval summary's rule, a tiny-model run end to end with resume,
``--record`` into a patched directory's record (and ``ctxext info`` showing it), bad input before the model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

import ctxext
from ctxext.checkpoint.info import describe
from ctxext.cli import main
from ctxext.core.record import ExtensionRecord
from ctxext.errors import CtxextError
from ctxext.eval import runner
from ctxext.eval.backend import TransformersBackend
from ctxext.eval.constants import BASELINE
from ctxext.eval.probe import ProbeResult, ladder, probe, read_summary
from ctxext.eval.store import RECORDS
from ctxext.eval.summary import summarize

from support.cli_harness import assert_refused_before_loading

TASKS = ["passkey", "niah_single_1"]
LENGTHS = [600, 700]  # the byte tokenizer's niah_single_1 prompts need about 520 tokens


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 2-layer model gains nothing from threads, and loses a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_ladder():
    assert ladder(8192) == [1024, 2048, 4096, 6144, 8192]
    assert ladder(8192, beyond=2) == [1024, 2048, 4096, 6144, 8192, 12288, 16384]
    assert ladder(8192, beyond=2.2)[-3:] == [12288, 16384, 18022]  # steps of L/2, then beyond x L itself
    assert ladder(4) == [1, 2, 3, 4]  # no zero-length rung


def _summary(scores: dict[int, tuple[float, float]], threshold: float = 85.6) -> dict:
    """The eval summary of hand-written records: length -> (passkey score, niah_single_1 score)."""
    records = [
        {"method": BASELINE, "task": task, "length": length, "sample": 0, "depth": 0.5, "score": value}
        for length, values in scores.items()
        for task, value in zip(TASKS, values)
    ]
    return summarize(records, [BASELINE], TASKS, sorted(scores), [0.5], threshold)


@pytest.mark.parametrize(
    "scores, expected",
    [
        ({1024: (100, 100), 2048: (100, 100)}, 2048),  # the whole ladder
        ({1024: (100, 100), 2048: (100, 80), 3072: (50, 50), 4096: (100, 100)}, 2048),  # a dip, then recovery: stop
        ({1024: (100, 71.2), 2048: (100, 100)}, None),  # a mean of exactly 85.6 is not above the threshold
        ({1024: (0, 0), 2048: (100, 100)}, None),  # the shortest length fails already
    ],
)
def test_effective_length_follows_the_eval_summary_rule(scores, expected):
    per_task, average, found = read_summary(_summary(scores), TASKS, sorted(scores))
    assert found == expected
    assert average == {L: (a + b) / 2 for L, (a, b) in scores.items()}
    assert per_task == {t: {L: v[i] for L, v in scores.items()} for i, t in enumerate(TASKS)}


def test_the_printed_result_says_where_e_stops():
    result = ProbeResult(
        model="m",
        out=Path("probe-m"),
        context_length=2048,
        patch=None,
        lengths=[1024, 2048],
        tasks=TASKS,
        depths=[0, 1],
        samples=2,
        threshold=85.6,
        scores={"passkey": {1024: 100.0, 2048: 100.0}, "niah_single_1": {1024: 100.0, 2048: 75.0}},
        average={1024: 100.0, 2048: 87.5},
        effective_length=2048,
        seconds=1.0,
        generation_seconds=0.5,
        heatmap=None,
        report=Path("probe-m/report.md"),
    )
    lines = result.lines()
    assert lines[1:4] == [
        "length  passkey  niah_single_1   mean",
        "  1024    100.0          100.0  100.0",
        "  2048    100.0           75.0   87.5",
    ]
    assert lines[4] == "effective length: 2048 tokens, the whole ladder (mean above 85.6 at every length)"
    assert "4 prompts per task and length (2 depths x 2 keys)" in lines[0]


def test_probe_on_a_tiny_model_end_to_end_then_resumes(tiny_eval_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "probe"
    args = [
        "probe",
        str(tiny_eval_dir),
        "--lengths",
        ",".join(map(str, LENGTHS)),
        "--samples",
        "1",
        "--depths",
        "0,1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "context length 64 (native); 2 prompts per task and length (2 depths x 1 key)" in printed
    assert "length  passkey  niah_single_1  mean" in printed
    # random weights retrieve nothing: E lies below the ladder, and the probe says so
    assert "effective length: below 600 tokens (no ladder length scores above 85.6)" in printed
    assert "took " in printed and "probe.json, probe.png, report.md" in printed
    data = json.loads((out / "probe.json").read_text())
    assert data["effective_length"] is None and data["lengths"] == LENGTHS and data["tasks"] == TASKS
    assert all(score < 85.6 for score in data["average"].values())
    assert set(data["scores"]["passkey"]) == {"600", "700"} and data["seconds"] > 0
    image = imread(out / "probe.png")
    assert image.ndim == 3 and image.shape[0] > 100
    assert "the model as it loads" in (out / "report.md").read_text()
    before = (out / RECORDS).read_text().splitlines()
    assert len(before) == len(TASKS) * len(LENGTHS) * 2

    calls = []
    real = TransformersBackend.generate
    monkeypatch.setattr(
        TransformersBackend,
        "generate",
        lambda self, sample: calls.append((sample.task, sample.length)) or real(self, sample),
    )
    again = ctxext.probe(tiny_eval_dir, out=out, lengths=LENGTHS, samples=1, depths=[0, 1])
    assert calls == [] and again.effective_length is None  # everything was in the records
    more = probe(tiny_eval_dir, out=out, lengths=[*LENGTHS, 650], samples=1, depths=[0, 1], tasks=["passkey"])
    assert calls == [("passkey", 650), ("passkey", 650)] and more.lengths == [600, 650, 700]
    assert (out / RECORDS).read_text().splitlines()[: len(before)] == before


def _oracle(longest_right: int, seen: list):
    """A stand-in for generation: right up to ``longest_right`` tokens, wrong beyond; notes the model's record."""

    def generate(backend, sample):
        seen.append(ExtensionRecord.of(backend.model.config))
        return (" ".join(sample.references) if sample.length <= longest_right else ""), sample.n_tokens

    return generate


def test_record_stores_e_in_a_patched_directory_and_info_shows_it(tiny_eval_dir, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_eval_dir, model)
    original = (model / "config.json").read_bytes()
    ctxext.patch_directory(model, "yarn", factor=16)  # context 1024: the ladder 128 .. 1024
    seen: list = []
    monkeypatch.setattr(TransformersBackend, "generate", _oracle(768, seen))
    result = probe(model, out=tmp_path / "probe", depths=[0.5], samples=1, record=True)
    assert result.lengths == [512, 768, 1024]  # 128 and 256 are too short for the prompts
    assert result.effective_length == 768 and result.first_failing() == 1024
    assert result.context_length == 1024 and result.patch == "yarn x16 of 64"
    assert seen and all(r is not None and r.target_length == 1024 for r in seen)  # the patch stayed on
    assert result.recorded == model / "config.json"
    assert ExtensionRecord.of(json.loads(result.recorded.read_text())).effective_length == 768
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["recorded"] == str(model / "config.json")
    assert "effective length: 768 tokens (mean above 85.6 up to there; 1024 scores 0.0)" in "\n".join(result.lines())

    assert main(["info", str(model)]) == 0
    assert "effective length: 768 (measured by ctxext probe)" in capsys.readouterr().out
    assert ctxext.from_pretrained(model).config.ctxext["effective_length"] == 768  # reapply keeps it
    ctxext.unpatch_directory(model)  # the length goes with the patch
    assert (model / "config.json").read_bytes() == original


def test_the_record_field_round_trips_and_old_records_load(tiny_dir):
    record = ExtensionRecord(
        method="yarn",
        factor=2.0,
        original_length=64,
        target_length=128,
        params={},
        rope_layer_types=None,
        replaced={"max_position_embeddings": 64},
        version="0.1.0",
    )
    old = record.to_dict()
    assert "effective_length" not in old  # records without a measurement are written as before
    assert ExtensionRecord.from_dict(old) == record and record.effective_length is None
    record.effective_length = 4096
    assert ExtensionRecord.from_dict(record.to_dict()) == record
    with pytest.raises(CtxextError, match="effective_length"):
        ExtensionRecord.from_dict({**old, "effective_length": -1})
    with pytest.raises(CtxextError, match="not a valid ctxext record"):
        ExtensionRecord.from_dict({k: v for k, v in old.items() if k != "method"})
    ctxext.patch_directory(tiny_dir, "yarn", factor=2)
    assert not any(label == "effective length" for label, _ in describe(tiny_dir))


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no length of the ladder (8, 16, 32, 48, 64 tokens, from the context length 64) is long enough"),
        (["--beyond", "1"], "--beyond is a multiple of the context length above 1"),
        (["--lengths", "100"], "length 100 is too short for"),
        (["--lengths", "600", "--record"], "config.json carries no ctxext patch to record the effective length in"),
        (["--lengths", "600", "--samples", "0"], "--samples must be a whole number of at least 1"),
        (["--lengths", "600", "--threshold", "101"], "--threshold is a score between 0 and 100"),
        (["--lengths", "600", "--depths", "random"], "--depths must be comma-separated numbers in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(tiny_eval_dir, tmp_path, capsys, monkeypatch, extra, message):
    out = tmp_path / "probe"
    assert_refused_before_loading(
        monkeypatch, capsys, runner, ["probe", str(tiny_eval_dir), "--out", str(out), *extra], out, message
    )


def test_bad_library_arguments(tiny_eval_dir):
    with pytest.raises(CtxextError, match="not both"):
        probe(tiny_eval_dir, lengths=[600], beyond=2)
    with pytest.raises(CtxextError, match="retrieval tasks"):
        probe(tiny_eval_dir, lengths=[600], tasks=["ppl"])
    with pytest.raises(CtxextError, match="fixed needle depths"):
        probe(tiny_eval_dir, lengths=[600], depths=None)
