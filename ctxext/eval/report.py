"""report.md, report.json and the PNG pictures of a run, written into its --out directory.

Each file is replaced atomically (``atomic.atomic_write``): an interrupted report leaves the
previous file or the new one, never half of one."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from pathlib import Path

from ..checkpoint.atomic import atomic_write, write_json
from ..version import __version__
from . import plots
from .agreement import compare
from .constants import BASELINE, DEFAULT_DEPTHS, LM_EVAL
from .lengths import format_length
from .summary import summarize
from .tasks import get_task, nll_tasks

NOT_COMPARABLE = (
    "Tasks marked * use an offline prose haystack (CPython's pydoc topics) instead of RULER's "
    "essays: their scores are not comparable with published RULER numbers. RULER's QA tasks "
    "(SQuAD, HotpotQA) need downloaded data and are left out."
)


def _versions() -> dict:
    found = {"ctxext": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "lm_eval"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _delta(after, before) -> str:
    return "-" if after is None or before is None else f"{after - before:+.1f}"


def _before_after(rows: list[tuple[str, dict]], methods: list[str], label: str = "length") -> list[str]:
    """A markdown table: one row per (label, {method: value}), before / after / delta columns."""
    header = [label, f"before ({BASELINE})"]
    for m in methods[1:]:
        header += [f"after ({m})", f"delta ({m})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows:
        before = values.get(BASELINE)
        cells = [name, _fmt(before)]
        for m in methods[1:]:
            cells += [_fmt(values.get(m)), _delta(values.get(m), before)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _length_rows(table: dict, methods: list[str], lengths: list[int]) -> list[tuple[str, dict]]:
    return [(format_length(L), {m: table[m].get(L) for m in methods}) for L in lengths]


def _header(config, meta: dict, methods: list[str]) -> list[str]:
    extension = f"factor {config.factor:g}" if config.factor else f"target length {config.target_length}"
    params = f", parameters {json.dumps(config.params)}" if config.params else ""
    depths = "random" if config.depths is None else ", ".join(f"{d:g}" for d in config.depths)
    baseline = f"{BASELINE} (before)"
    if config.as_loaded:
        baseline = f"{BASELINE} = the model as it loads (a ctxext patch of its checkpoint kept)"
    rows = [
        ("model", f"`{config.model}`"),
        ("methods", f"{baseline}; " + (", ".join(methods[1:]) + f" ({extension}{params})" if methods[1:] else "none")),
        ("native / extended length", f"{meta['native_length']} / {meta['extended_length']} tokens"),
        ("lengths", ", ".join(format_length(L) for L in config.lengths)),
        ("tasks", ", ".join(config.tasks)),
        ("samples", f"{config.samples} per task and length; needle depths {depths}"),
        ("backend", meta["backend"] + (f" ({meta['engine']})" if meta.get("engine") else "")),
        ("dtype / device", f"{config.dtype} / {meta['device']}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())),
        ("seed", str(config.seed)),
        ("date", meta["date"]),
    ]
    if meta.get("corpus"):
        rows.append(
            ("perplexity corpus", f"{meta['corpus']} ({meta['corpus_tokens']} tokens), stride {config.ppl_stride}")
        )
    return ["# ctxext evaluation report", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _ruler_section(summary: dict, methods: list[str], lengths: list[int]) -> list[str]:
    lines = ["", "## RULER-style suite (score 0-100)", "", NOT_COMPARABLE]
    for task in summary["ruler_tasks"]:
        mark = "" if get_task(task).comparable else " *"
        lines += ["", f"### {task}{mark}", ""]
        lines += _before_after(
            _length_rows({m: summary["scores"][m][task] for m in methods}, methods, lengths), methods
        )
    lines += ["", "### average over the suite", ""]
    lines += _before_after(_length_rows(summary["ruler_average"], methods, lengths), methods)
    lines += ["", f"Effective length (longest length up to which the average stays above {summary['threshold']:g}):"]
    lines += [f"- {m}: {_length_or_none(summary['effective_length'][m], lengths)}" for m in methods]
    return lines


def _length_or_none(value, lengths) -> str:
    return format_length(value) if value else f"below {format_length(lengths[0])}"


def _ppl_section(summary: dict, methods: list[str], lengths: list[int]) -> list[str]:
    ppl = summary["ppl"]
    lines = ["", "## Perplexity (sliding window, token-weighted)", ""]
    lines += _before_after(
        [(format_length(L), {m: ppl[m][L]["ppl"] for m in methods if L in ppl[m]}) for L in lengths], methods, "window"
    )
    for L in lengths:
        present = [m for m in methods if L in ppl[m]]
        if not present:
            continue
        size = ppl[present[0]][L]["bucket_size"]
        lines += [
            "",
            f"Mean NLL per position bucket, {format_length(L)} window "
            f"({ppl[present[0]][L]['windows']} windows, {ppl[present[0]][L]['tokens']} tokens scored):",
            "",
        ]
        lines += ["| positions | " + " | ".join(present) + " |", "|" + "---|" * (len(present) + 1)]
        for i in range(len(ppl[present[0]][L]["bucket_nll"])):
            cells = [f"{ppl[m][L]['bucket_nll'][i]:.3f}" for m in present]
            lines.append(f"| {i * size}-{min((i + 1) * size, L)} | " + " | ".join(cells) + " |")
    return lines


def _backends_section(rows: list[dict]) -> list[str]:
    """This run's backend beside the others that ran the same prompts into this --out."""
    lines = ["", "## Backends side by side", ""]
    lines += [
        "The same prompts (token ids) through each backend; a cell differs when more than one prompt in ten is "
        "scored differently.",
        "",
        "| method | task | length | prompts | backends | score (or perplexity) | prompts scored differently "
        "| seconds per prompt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        values = row.get("score") or row["ppl"]
        pair = " / ".join(row["backends"])
        shown = " / ".join(f"{values[b]:.1f}" if "score" in row else f"{values[b]:.3f}" for b in row["backends"])
        differing = f"{row['differing']}" + (" (differs)" if row["differs"] else "") if "score" in row else "-"
        seconds = " / ".join(f"{row['seconds'][b]:.1f}" for b in row["backends"])
        lines.append(
            f"| {row['method']} | {row['task']} | {format_length(row['length'])} | {row['prompts']} | {pair} "
            f"| {shown} | {differing} | {seconds} |"
        )
    return lines


def _metric_order(metric: str) -> tuple:
    """Length metrics ("512", "4096") first and by length, then the others by name."""
    return (0, int(metric), "") if metric.isdigit() else (1, 0, metric)


def _lm_eval_section(results: dict, methods: list[str]) -> list[str]:
    rows = []
    for task in sorted({t for r in results.values() for t in r}):
        for metric in sorted({k for r in results.values() for k in r.get(task, {})}, key=_metric_order):
            rows.append(
                (f"{task} {metric}", {m: results[m].get(task, {}).get(metric) for m in methods if m in results})
            )
    return ["", "## lm-eval tasks", ""] + _before_after(rows, methods, "task / metric")


def write_report(config, records: list[dict], store, meta: dict) -> dict:
    out = Path(config.out)
    methods = [BASELINE, *config.methods]
    grid = sorted(config.depths) if config.depths is not None else list(DEFAULT_DEPTHS)
    summary = summarize(records, methods, config.tasks, config.lengths, grid, config.threshold)
    meta = {**meta, "versions": _versions(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    lines = _header(config, meta, methods)
    if "passkey" in config.tasks:
        lines += ["", "## Passkey retrieval (% correct)", ""]
        lines += _before_after(
            _length_rows({m: summary["scores"][m]["passkey"] for m in methods}, methods, config.lengths), methods
        )
        lines += [
            "",
            f"Longest length up to which passkey stays above {config.threshold:g}%: "
            + "; ".join(
                f"{m} {_length_or_none(summary['passkey_effective_length'][m], config.lengths)}" for m in methods
            ),
        ]
    if summary["ruler_tasks"]:
        lines += _ruler_section(summary, methods, config.lengths)
    if nll_tasks(config.tasks):
        lines += _ppl_section(summary, methods, config.lengths)
    tasks_key = ",".join(config.lm_eval_tasks)
    lm_eval_results = {
        r["method"]: r["results"]
        for r in store.records.values()
        if r["task"] == LM_EVAL and r["sample"] == tasks_key and r["method"] in methods
    }
    if config.lm_eval_tasks:
        lines += _lm_eval_section(lm_eval_results, methods)
    backends = compare(meta["backend"], records, store.others)
    if backends:
        lines += _backends_section(backends)
    pictures = []
    for task, task_grid in summary["depth_grid"].items():
        pictures.append(plots.heatmap(task, task_grid, config.lengths, out / f"heatmap_{task}.png"))
    if nll_tasks(config.tasks):
        pictures.append(plots.perplexity_curves(summary["ppl"], meta["native_length"], out / "perplexity.png"))
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    atomic_write(out / "report.md", ("\n".join(lines) + "\n").encode("utf-8"))
    data = {
        "config": {
            **config.settings(),
            "methods": methods,
            "tasks": config.tasks,
            "lengths": config.lengths,
            "samples": config.samples,
            "threshold": config.threshold,
            "device": meta["device"],
        },
        "meta": meta,
        "summary": summary,
        "lm_eval": lm_eval_results,
        "backends": backends,
        "records": records,
    }
    write_json(out / "report.json", data, indent=1, default=str)
    return data
