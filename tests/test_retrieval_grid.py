"""``bench/retrieval_grid.py`` on a tiny model: the queue the CPU runs and a lent GPU runs, so a first try works."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "retrieval_grid.py"


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("retrieval_grid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["retrieval_grid"] = module
    spec.loader.exec_module(module)
    return module


def _args(model, queue: Path, out: Path, **extra) -> Namespace:
    return Namespace(
        model=str(model),
        queue=str(queue),
        out=str(out),
        dtype="float32",
        device="cpu",
        seed=0,
        threads=0,
        deadline_minutes=0,
        **extra,
    )


def test_a_queue_runs_resumes_and_tabulates(grid, tiny_eval_dir, tmp_path, capsys):
    queue = tmp_path / "queue.txt"
    queue.write_text(
        "# rows x lengths\nunpatched 600 passkey 2\nyarn 700 passkey,niah_single_2 2\nself-extend 700 passkey 1\n"
    )
    out = tmp_path / "grid"
    grid.run(_args(tiny_eval_dir, queue, out))
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["row"], r["task"], r["length"], r["sample"]) for r in records] == [
        ("unpatched", "passkey", 600, 0),
        ("unpatched", "passkey", 600, 1),
        ("yarn", "passkey", 700, 0),
        ("yarn", "passkey", 700, 1),
        ("yarn", "niah_single_2", 700, 0),
        ("yarn", "niah_single_2", 700, 1),
        ("self-extend", "passkey", 700, 0),
    ]
    yarn = records[2]
    assert yarn["method"] == "yarn" and yarn["target_length"] == 700 and yarn["peak_mib"] > 0
    assert records[0]["method"] == "unpatched" and records[0]["target_length"] is None
    assert all(isinstance(r["generated"], str) and r["seconds"] > 0 for r in records)

    grid.run(_args(tiny_eval_dir, queue, out))  # everything is there: nothing runs again
    assert "nothing to do" in capsys.readouterr().out
    assert len((out / "records.jsonl").read_text().splitlines()) == len(records)

    grid.table(Namespace(runs=[out]))
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| row | passkey 600 |") and table[0].endswith("| misses |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| unpatched", "| yarn", "| self-extend"]


def test_a_deadline_stops_the_queue_and_a_rerun_finishes_it(grid, tiny_eval_dir, tmp_path, capsys):
    queue = tmp_path / "queue.txt"
    queue.write_text("unpatched 600 passkey 3\n")
    out = tmp_path / "grid"
    grid.run(Namespace(**{**vars(_args(tiny_eval_dir, queue, out)), "deadline_minutes": 1e-9}))
    assert "deadline reached" in capsys.readouterr().out
    assert len((out / "records.jsonl").read_text().splitlines()) <= 1
    grid.run(_args(tiny_eval_dir, queue, out))
    assert len((out / "records.jsonl").read_text().splitlines()) == 3


def test_the_shipped_queues_name_known_rows(grid):
    for queue in (SCRIPT.parent / "queues").glob("*.txt"):
        cells = grid.parse_queue(queue.read_text())
        assert cells and all(row in grid.ROWS for row, *_ in cells)


def test_a_bad_queue_line_is_refused(grid):
    with pytest.raises(SystemExit, match="queue line 1"):
        grid.parse_queue("no-such-row 16k passkey 10\n")
