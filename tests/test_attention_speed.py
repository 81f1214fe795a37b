"""bench/attention_speed.py: the length sweep writes its plot and tables, one line or row per method and length."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "attention_speed.py"


def _bench():
    spec = importlib.util.spec_from_file_location("attention_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_writes_plot_json_and_markdown(tmp_path):
    out = tmp_path / "cost"
    command = [sys.executable, str(SCRIPT), "--sweep", "32,64", "--methods", "dca", "--layers", "1", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    points = json.loads(out.with_suffix(".json").read_text())["points"]
    assert [(p["method"], p["length"]) for p in points] == [
        ("unpatched", 32),
        ("unpatched", 64),
        ("dca", 32),
        ("dca", 64),
    ]
    rows = [
        line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row.split(" | ")[:2] for row in rows[1:]] == [
        ["| unpatched", "32"],
        ["| unpatched", "64"],
        ["| dca", "32"],
        ["| dca", "64"],
    ]


def test_sweep_plot_draws_one_line_per_method_in_each_panel(tmp_path, monkeypatch):
    from ctxext.eval import plots

    bench = _bench()
    rows = [
        {"method": method, "prefill_s": {"32": 0.1 * scale, "64": 0.2 * scale}, "peak_mib": {"32": 1.0, "64": 2.0}}
        for method, scale in (("unpatched", 1), ("dca", 2), ("string", 3))
    ]
    drawn = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: drawn.append(fig) or path)
    bench.sweep_plot(bench.sweep_points(rows, [32, 64]), "test", tmp_path / "cost.png")
    for ax in drawn[0].axes:
        assert [(line.get_label(), list(line.get_xdata())) for line in ax.get_lines()] == [
            (method, [32, 64]) for method in ("unpatched", "dca", "string")
        ]


def test_rounds_keep_the_fastest_times_and_methods_take_parameters():
    command = [
        sys.executable,
        str(SCRIPT),
        "--lengths",
        "32",
        "--decode-steps",
        "0",
        "--rounds",
        "2",
        "--layers",
        "1",
        "--methods",
        "unpatched,lm-infinite@window=16+n_global=2",
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    measured = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [row["method"] for row in measured] == ["unpatched", "lm-infinite@window=16+n_global=2"] * 2
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| method | prefill 32 s (ratio) | peak MiB 32 (ratio) |"  # no decode column
    fastest = min(row["prefill_s"]["32"] for row in measured[1::2])
    assert table[2].startswith(f"| lm-infinite@window=16+n_global=2 | {fastest:.2f} (")


def test_method_spec_reads_typed_parameters():
    assert _bench().method_spec("lm-infinite@window=4096+top_k=5+log_scaling=true") == (
        "lm-infinite",
        {"window": 4096, "top_k": 5, "log_scaling": True},
    )
    assert _bench().method_spec("dca") == ("dca", {})
