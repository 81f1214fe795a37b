"""Backends side by side, from the records alone: this run's backend against every other backend that ran the same
units into the same ``--out`` (an engine and transformers, say).

A cell is (method, task, length). For a generation task it counts the prompts both backends answered and those
they scored differently; the cell *differs* when that is more than one prompt in ten. For a perplexity task it
gives each backend's perplexity over the windows both scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

from .store import record_key
from .tasks import get_task

DIFFER_SHARE = 0.1  # more than one prompt in ten scored differently


def compare(backend: str, records: list[dict], others: dict[str, dict[tuple, dict]]) -> list[dict]:
    """One row per (other backend, method, task, length) that both ran; ``records``: this run's, of ``backend``."""
    rows = []
    for other, theirs in sorted(others.items()):
        cells: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
        for record in records:
            match = theirs.get(record_key(record))
            if match is not None:
                cells[record["method"], record["task"], record["length"]].append((record, match))
        for (method, task, length), pairs in cells.items():
            row = {"method": method, "task": task, "length": length, "backends": [backend, other]}
            row["prompts"] = len(pairs)
            row["seconds"] = {b: mean(pair[i]["seconds"] for pair in pairs) for i, b in enumerate(row["backends"])}
            if get_task(task).generates:
                row["score"] = {b: mean(pair[i]["score"] for pair in pairs) for i, b in enumerate(row["backends"])}
                row["differing"] = sum(mine["score"] != their["score"] for mine, their in pairs)
                row["differs"] = row["differing"] > DIFFER_SHARE * len(pairs)
            else:
                row["ppl"] = {
                    b: math.exp(sum(p[i]["nll_sum"] for p in pairs) / sum(p[i]["n_scored"] for p in pairs))
                    for i, b in enumerate(row["backends"])
                }
                row["differs"] = False
            rows.append(row)
    return rows


def describe(row: dict) -> str:
    """One line on a cell where two backends differ."""
    mine, other = row["backends"]
    return (
        f"{mine} and {other} differ on {row['method']} {row['task']} at {row['length']} tokens: "
        f"{row['differing']} of {row['prompts']} prompts scored differently "
        f"({row['score'][mine]:.1f} vs {row['score'][other]:.1f})"
    )
