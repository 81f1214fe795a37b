"""``ctxext eval`` end to end on a tiny model: report files, resume, side-by-side methods, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from matplotlib.image import imread

from ctxext.cli import main
from ctxext.eval.backend import TransformersBackend
from ctxext.eval.store import RECORDS

ARGS = [
    "--methods",
    "yarn,ntk",
    "--factor",
    "2",
    "--tasks",
    "passkey,vt,ppl",
    "--lengths",
    "1k,1.5k",
    "--samples",
    "2",
    "--depths",
    "0,1",
    "--ppl-windows",
    "2",
    "--ppl-bucket",
    "512",
]
UNITS = 3 * (2 * 2 * 2 + 2 * 2)  # methods x (generation tasks x lengths x samples + ppl lengths x windows)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 2-layer model gains nothing from threads, and loses a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report_dir(tiny_eval_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--out", str(out)]) == 0
    return out


def _lines(path):
    return (path / RECORDS).read_text().splitlines()


def _without_timing(lines):
    return sorted(json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"}) for line in lines)


def test_report_files(report_dir):
    text = (report_dir / "report.md").read_text()
    for expected in (
        "| model |",
        "native / extended length | 64 / 128 tokens",
        "| seed | 0 |",
        "transformers",
        "## Passkey retrieval",
        "### vt",
        "## Perplexity",
        "delta (yarn)",
        "after (ntk)",
        "Effective length",
        "![heatmap_passkey](heatmap_passkey.png)",
    ):
        assert expected in text, expected
    data = json.loads((report_dir / "report.json").read_text())
    assert len(data["records"]) == UNITS
    passkey = [r for r in data["records"] if r["task"] == "passkey"]
    assert {r["method"] for r in passkey} == {"unpatched", "yarn", "ntk"}
    for r in passkey:
        assert {"n_tokens", "depth", "expected", "generated", "correct"} <= set(r)
        assert r["n_tokens"] + 10 <= r["length"] and r["depth"] in (0.0, 1.0)
    # the methods saw the same prompts
    by_method = {
        m: [(r["length"], r["sample"], r["expected"]) for r in passkey if r["method"] == m] for m in ("yarn", "ntk")
    }
    assert by_method["yarn"] == by_method["ntk"]
    ppl = data["summary"]["ppl"]
    assert set(ppl) == {"unpatched", "yarn", "ntk"} and all(v["ppl"] > 1 for m in ppl.values() for v in m.values())
    for name in ("heatmap_passkey.png", "perplexity.png"):
        image = imread(report_dir / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_rerun_redoes_nothing_and_an_interrupted_run_resumes(report_dir, tiny_eval_dir, monkeypatch):
    before = _lines(report_dir)
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--out", str(report_dir)]) == 0
    assert _lines(report_dir) == before

    # keep the first 7 records and half a line, as a kill during a write would leave
    (report_dir / RECORDS).write_text("\n".join(before[:7]) + "\n" + before[7][:20])
    calls = []
    real = TransformersBackend.generate
    monkeypatch.setattr(
        TransformersBackend, "generate", lambda self, sample: calls.append(sample.task) or real(self, sample)
    )
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--out", str(report_dir)]) == 0
    after = _lines(report_dir)
    assert after[:7] == before[:7] and len(after) == UNITS
    assert len(calls) == 3 * 2 * 2 * 2 - 7  # the first 7 records are generation records
    assert _without_timing(after) == _without_timing(before)  # greedy decoding is deterministic


def test_other_settings_in_the_same_out_dir_are_refused(report_dir, tiny_eval_dir, capsys):
    assert main(["eval", str(tiny_eval_dir), *ARGS, "--seed", "1", "--out", str(report_dir)]) == 2
    assert "other settings (seed)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tasks", "passkey,qa_1"], "unknown task 'qa_1'"),
        (["--lengths", "4q"], "bad length '4q'"),
        (["--method", "nope", "--factor", "2"], "unknown method 'nope'"),
        (["--method", "yarn"], "give --factor or --target-length"),
        (["--tasks", "ppl", "--text-file", "/nonexistent/book.txt"], "no such text file"),
        (["--depths", "0,2"], "--depths must lie in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_eval_dir, tmp_path, capsys, extra, message):
    assert main(["eval", str(tiny_eval_dir), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxext: error:") and message in err and err.count("\n") == 1


def test_unwritable_out_dir(tiny_eval_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["eval", str(tiny_eval_dir), "--out", str(blocker / "report")]) == 2
    assert "cannot write the report there" in capsys.readouterr().err
