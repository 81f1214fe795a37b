"""The retrieval table's measurement queue: named rows (a method and its parameters) x lengths x tasks x prompts.

    .venv/bin/python bench/retrieval_grid.py run --queue bench/queues/cpu.txt --out build/grid
    .venv/bin/python bench/retrieval_grid.py table build/grid          # markdown table from the records

Each queue line is one cell, ``ROW LENGTH TASKS PROMPTS`` (``self-extend 16k niah_single_2,niah_multikey_1 10``);
ROW names an entry of ``ROWS`` below. Cells run in the queue's order, one JSON line per prompt appended to
``OUT/records.jsonl`` at once (the generated answer kept), so a killed queue resumes where it stopped and a
longer queue only adds. The prompts are ``ctxext eval``'s (seed 0, sample indices 0..PROMPTS-1, depths cycled
over 0,0.25,0.5,0.75,1), so they equal an ``eval`` run's. Each record carries the seconds of its prompt and the
peak memory during it (CUDA: peak allocated; CPU: peak resident set sampled every 20 ms). Every row is
applied with ``target_length`` = the cell's length, or twice the native length for a cell inside it (``auto``
resolves by its rule for that length); the
unpatched row is the model as it loads. ``--device cuda`` runs the same queue on a GPU
(``bench/queues/gpu.txt``, the whole grid, most telling cells first), ``--deadline-minutes`` stops it in
time; ``tests/test_retrieval_grid.py`` runs it on a tiny model, so a first try on a lent GPU works.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from pathlib import Path

ROWS: dict[str, tuple[str | None, dict]] = {
    "unpatched": (None, {}),
    "auto": ("auto", {}),
    "yarn": ("yarn", {}),
    "ntk": ("ntk", {}),
    "pi": ("pi", {}),
    "self-extend": ("self-extend", {}),
    "self-extend+log": ("self-extend", {"log_scaling": True}),
    "dca": ("dca", {}),
    "dca+log": ("dca", {"log_scaling": True}),
    "dca+temperature": ("dca", {"temperature": True}),
    "rerope": ("rerope", {}),  # log-n scaling on by default
    "rerope-nolog": ("rerope", {"log_scaling": False}),
    "rerope-w1024": ("rerope", {"window": 1024}),
    "rerope-w4096": ("rerope", {"window": 4096}),
    "rerope-leaky": ("rerope", {"leaky": 0.25}),
    "string": ("string", {}),
    "ms-poe": ("ms-poe", {}),
    "lm-infinite": ("lm-infinite", {}),
    "lm-infinite-topk": ("lm-infinite", {"window": 4096, "top_k": 5}),
    "gali": ("gali", {}),
    "gali-nonoise": ("gali", {"noise": False}),
    "block-retrieval": ("block-retrieval", {}),  # n_sink 128, window 4096, block_size 64, top_k 8 for L = 8192
    "block-retrieval-w2048": ("block-retrieval", {"window": 2048}),  # retrieved blocks nearer, half the window's work
    # the factors LongRoPE's search found for 16k (ctxext tune --methods longrope, BENCHMARKS.md)
    "longrope-searched-16k": ("longrope", {"long_factor": "@docs/records/longrope-factors-16k.json"}),
}


def parse_queue(text: str) -> list[tuple[str, int, list[str], int]]:
    from ctxext.eval.lengths import parse_lengths

    cells = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4 or parts[0] not in ROWS:
            raise SystemExit(
                f"queue line {number}: want 'ROW LENGTH TASKS PROMPTS' with ROW in {sorted(ROWS)}: {line!r}"
            )
        (length,) = parse_lengths(parts[1])
        cells.append((parts[0], length, parts[2].split(","), int(parts[3])))
    return cells


class PeakMemory:
    """Peak memory (MiB) while the block runs: CUDA peak allocated, else the sampled resident set."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = 0.0

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def apply_row(model, row: str, length: int) -> dict:
    """Extend ``model`` as ``row`` says for ``length`` tokens (for twice the native length when ``length`` is
    inside it: the short-context guard); returns the method, parameters and target length applied."""
    from ctxext import extend, is_extended, restore
    from ctxext.core.rope_setup import read_rope_setup, text_config

    if is_extended(model):
        restore(model)
    method, params = ROWS[row]
    if method is None:
        return {"method": "unpatched", "params": {}, "target_length": None}
    target = max(length, 2 * read_rope_setup(text_config(model.config)).native_length)
    extend(model, method, target_length=target, **params)
    chosen = getattr(text_config(model.config), "ctxext", {}).get("auto") or {}
    return {"method": chosen.get("chose", method), "params": chosen.get("params", params), "target_length": target}


def run(args) -> None:
    import torch
    from tqdm import tqdm

    from ctxext.checkpoint.locations import resolve_model_path
    from ctxext.eval.constants import DEFAULT_DEPTHS
    from ctxext.eval.generation import greedy_generate
    from ctxext.eval.scoring import score
    from ctxext.eval.tasks import make_sample
    from ctxext.model.loading import load_tokenizer, load_weights

    cells = parse_queue(Path(args.queue).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    done = {(r["row"], r["task"], r["length"], r["sample"]) for r in read_records(out)}
    todo = [
        (row, length, task, i)
        for row, length, tasks, n in cells
        for task in tasks
        for i in range(n)
        if (row, task, length, i) not in done
    ]
    if not todo:
        print("nothing to do: every cell of the queue is in", log)
        return
    torch.set_num_threads(args.threads) if args.threads else None
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    model = load_weights(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    applied, current = None, None
    deadline = time.monotonic() + args.deadline_minutes * 60 if args.deadline_minutes else None
    with log.open("a", encoding="utf-8") as f, tqdm(total=len(todo), unit="prompt") as bar:
        for row, length, task, index in todo:
            if deadline is not None and time.monotonic() > deadline:
                print(f"deadline reached: {bar.n} of {len(todo)} prompts done; rerun to resume")
                break
            if (row, length) != current:
                applied, current = apply_row(model, row, length), (row, length)
            bar.set_postfix_str(f"{row} {task} {length}")
            sample = make_sample(task, tokenizer, length, index, args.seed, DEFAULT_DEPTHS)
            start = time.perf_counter()
            with PeakMemory(args.device) as memory:
                generated, n_tokens = greedy_generate(model, tokenizer, sample.prompt, sample.max_new_tokens)
            value = score(sample.metric, generated, sample.references)
            f.write(
                json.dumps(
                    {
                        "row": row,
                        **applied,
                        "task": task,
                        "length": length,
                        "sample": index,
                        "depth": sample.depth,
                        "n_tokens": n_tokens,
                        "expected": sample.references,
                        "generated": generated,
                        "score": value,
                        "seconds": round(time.perf_counter() - start, 3),
                        "peak_mib": round(memory.peak, 1),
                        "dtype": args.dtype,
                        "device": args.device,
                    }
                )
                + "\n"
            )
            f.flush()
            bar.update()


def read_records(out: Path) -> list[dict]:
    """The records of a run folder (its records.jsonl) or of a records file (as kept in docs/records/)."""
    path = Path(out) if Path(out).is_file() else Path(out) / "records.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return records


def table(args) -> None:
    """One row per configuration, one column per (task, length): mean score (hits / prompts) and seconds per
    prompt; then the row's mean over its cells, its peak memory and its misses by kind."""
    from ctxext.eval.lengths import format_length
    from ctxext.eval.misses import miss_counts

    records = [r for out in args.runs for r in read_records(out)]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[r["row"], r["length"], r["task"]].append(r)
    rows = list(dict.fromkeys(r["row"] for r in records))
    columns = sorted({(r["length"], r["task"]) for r in records})
    head = [f"{task} {format_length(length)}" for length, task in columns]
    print("| row | " + " | ".join(head) + " | mean | peak MiB | misses |")
    print("|---" * (len(head) + 4) + "|")
    for row in rows:
        values, peak, texts = [], [], []
        for length, task in columns:
            rs = cells.get((row, length, task), [])
            if not rs:
                texts.append("-")
                continue
            mean = sum(r["score"] for r in rs) / len(rs)
            values.append(mean)
            peak += [r["peak_mib"] for r in rs]
            seconds = sum(r["seconds"] for r in rs) / len(rs)
            texts.append(f"{mean:.0f} ({sum(r['score'] == 100 for r in rs)}/{len(rs)}), {seconds:.0f} s")
        mean = f"{sum(values) / len(values):.0f}" if values else "-"
        misses = miss_counts([r for r in records if r["row"] == row])
        why = ", ".join(f"{kind} {count}" for kind, count in misses.items()) or "-"
        print(f"| {row} | " + " | ".join(texts) + f" | {mean} | {max(peak) if peak else '-'} | {why} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) a queue")
    p.add_argument("--queue", required=True, help="queue file: one 'ROW LENGTH TASKS PROMPTS' cell per line")
    p.add_argument("--out", required=True, help="folder of records.jsonl (rerun to resume)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument(
        "--deadline-minutes",
        type=float,
        default=0,
        help="stop starting prompts after this many minutes (0: no deadline); a rerun resumes",
    )
    p.set_defaults(func=run)
    t = sub.add_parser("table", help="markdown table of one or more runs")
    t.add_argument("runs", nargs="+", type=Path, help="run folders or records files")
    t.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
