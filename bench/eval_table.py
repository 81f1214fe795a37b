"""Markdown table of passkey and perplexity per method and length from a ``ctxext eval`` run.

    .venv/bin/python bench/eval_table.py build/bench-smollm2-x2

Reads the run's ``records.jsonl``, so it also tabulates a run that has not finished
(cells without records show '-').
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from ctxext.eval.lengths import format_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the --out directory of a ctxext eval run")
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.run / "records.jsonl").read_text().splitlines()]
    passkey, ppl = defaultdict(list), defaultdict(list)
    for r in records:
        (passkey if r["task"] == "passkey" else ppl)[r["method"], r["length"]].append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    lengths = sorted({r["length"] for r in records})
    print(
        "| method | "
        + " | ".join(f"passkey {format_length(L)}" for L in lengths)
        + " | "
        + " | ".join(f"ppl {format_length(L)}" for L in lengths)
        + " |"
    )
    print("|---" * (1 + 2 * len(lengths)) + "|")
    for m in methods:
        cells = []
        for L in lengths:
            rs = sorted(passkey[m, L], key=lambda r: r["depth"])
            missed = [f"{r['depth']:.0%}" for r in rs if not r["correct"]]
            cells.append(
                f"{sum(r['correct'] for r in rs)}/{len(rs)}" + (f" (missed {', '.join(missed)})" if missed else "")
                if rs
                else "-"
            )
        for L in lengths:
            ws = ppl[m, L]
            cells.append(
                f"{math.exp(sum(w['nll_sum'] for w in ws) / sum(w['n_scored'] for w in ws)):.2f}" if ws else "-"
            )
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
