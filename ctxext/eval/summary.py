"""Numbers for the report, computed from the per-sample records only (so a report can be
rebuilt or re-scored from report.json): per-length means, depth x length grids, RULER
averages, effective lengths and token-weighted perplexities."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

from .tasks import generation_tasks, get_task, nll_tasks


def nearest(value: float, grid: list[float]) -> float:
    return min(grid, key=lambda g: abs(g - value))


def effective_length(scores: dict[int, float], threshold: float) -> int | None:
    """RULER's effective length: the longest length up to which every tested length scores
    above the threshold (None when the shortest one already does not)."""
    best = None
    for length in sorted(scores):
        if scores[length] <= threshold:
            break
        best = length
    return best


def task_average(scores: dict[str, dict[int, float]], tasks: list[str], lengths: list[int]) -> dict[int, float]:
    """{length: mean score over ``tasks``} at each length every one of ``tasks`` has a score for
    (``scores``: task -> {length -> score}, one method's)."""
    return {L: mean(scores[t][L] for t in tasks) for L in lengths if all(L in scores[t] for t in tasks)}


def summarize(
    records: list[dict],
    methods: list[str],
    tasks: list[str],
    lengths: list[int],
    depth_grid: list[float],
    threshold: float,
) -> dict:
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_key[r["method"], r["task"], r["length"]].append(r)
    scores = {
        m: {
            t: {L: mean(r["score"] for r in by_key[m, t, L]) for L in lengths if by_key[m, t, L]}
            for t in generation_tasks(tasks)
        }
        for m in methods
    }
    ruler_tasks = [t for t in tasks if get_task(t).family == "ruler"]
    summary: dict = {"scores": scores, "threshold": threshold, "ruler_tasks": ruler_tasks}
    if ruler_tasks:
        average = {m: task_average(scores[m], ruler_tasks, lengths) for m in methods}
        summary["ruler_average"] = average
        summary["effective_length"] = {m: effective_length(average[m], threshold) for m in methods}
    if "passkey" in tasks:  # the papers' own yardstick, reported apart from the suite
        summary["passkey_effective_length"] = {m: effective_length(scores[m]["passkey"], threshold) for m in methods}
    depth_tasks = [t for t in generation_tasks(tasks) if get_task(t).has_depths]
    summary["depth_grid"] = {t: _depth_grid(by_key, t, methods, lengths, depth_grid) for t in depth_tasks}
    for task in nll_tasks(tasks):  # one nll task (perplexity) today; its summary keeps the name "ppl"
        summary["ppl"] = {m: {L: _ppl(by_key[m, task, L]) for L in lengths if by_key[m, task, L]} for m in methods}
    return summary


def _depth_grid(by_key, task, methods, lengths, grid) -> dict:
    """method -> {depth bin -> {length -> mean score}}."""
    out = {}
    for m in methods:
        cells: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for L in lengths:
            for r in by_key[m, task, L]:
                cells[nearest(r["depth"], grid)][L].append(r["score"])
        out[m] = {d: {L: mean(v) for L, v in row.items()} for d, row in sorted(cells.items())}
    return out


def _ppl(windows: list[dict]) -> dict:
    nll = sum(w["nll_sum"] for w in windows)
    n = sum(w["n_scored"] for w in windows)
    buckets = [sum(v) for v in zip(*(w["bucket_nll"] for w in windows))]
    counts = [sum(v) for v in zip(*(w["bucket_count"] for w in windows))]
    return {
        "nll": nll / n,
        "ppl": math.exp(nll / n),
        "tokens": n,
        "windows": len(windows),
        "bucket_nll": [b / c for b, c in zip(buckets, counts)],
        "bucket_size": counts[0] // len(windows),
    }
