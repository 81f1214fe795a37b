"""Passkey retrieval on SmolLM2-135M-Instruct, unpatched and with each extension method.

    .venv/bin/python bench/passkey_methods.py --length 1500 --factor 2
    python bench/passkey_methods.py --length 16000 --factor 2 --device cuda --model PATH.gguf
    .venv/bin/python bench/passkey_methods.py --length 16000 --seeds 0,1 --methods dca,self-extend \
        --no-baseline --params '{"dca": {"temperature": true}}' --records build/passkey-16k.jsonl

One prompt per depth and seed (5 depths x 2 seeds = 10 prompts per cell with --seeds 0,1).
With --records every answer is appended to a JSON-lines file as soon as it is generated, and
a rerun skips the prompts already there (resume). Prints a markdown table (correct/total per
method, the depths missed, and the wall time relative to the first method of the run) for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

import ctxext
from ctxext.checkpoint.default_model import default_model_path
from ctxext.checkpoint.locations import resolve_model_path
from ctxext.eval.passkey import run_passkey

PARAMS = {"longrope": {"long_factor": 2.0}}


def _load_records(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1500)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each gives one key per depth")
    parser.add_argument("--methods", default=",".join(ctxext.list_methods()))
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched model")
    parser.add_argument("--params", default="{}", help="JSON {method: {parameter: value}} on top of the defaults")
    parser.add_argument("--records", type=Path, help="JSON-lines file of every answer (appended; resumes)")
    parser.add_argument("--model", help="a .gguf file or model directory (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    depths = [float(d) for d in args.depths.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    params = {**PARAMS, **json.loads(args.params)}
    location = resolve_model_path(args.model) if args.model else resolve_model_path(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    model = ctxext.from_pretrained(args.model or default_model_path(), dtype=torch.float32).to(args.device).eval()
    records = _load_records(args.records)
    methods = ([] if args.no_baseline else ["unpatched"]) + args.methods.split(",")
    for method in tqdm(methods, desc="methods"):
        if ctxext.is_extended(model):
            ctxext.restore(model)
        if method != "unpatched":
            ctxext.extend(model, method, factor=args.factor, **params.get(method, {}))
        for seed in seeds:
            if any(r["method"] == method and r["seed"] == seed and r["length"] == args.length for r in records):
                continue
            start = time.perf_counter()
            results = run_passkey(model, tokenizer, args.length, depths, seed=seed)
            seconds = time.perf_counter() - start
            new = [
                {
                    "method": method,
                    "params": params.get(method, {}),
                    "factor": args.factor,
                    "length": args.length,
                    "seed": seed,
                    "depth": r.depth,
                    "n_tokens": r.n_tokens,
                    "expected": r.expected,
                    "generated": r.generated,
                    "correct": r.correct,
                    "seconds": seconds / len(results),
                }
                for r in results
            ]
            records += new
            if args.records is not None:
                with args.records.open("a") as handle:
                    handle.writelines(json.dumps(r) + "\n" for r in new)
            tqdm.write(f"{method} seed {seed}: {[r.correct for r in results]} {[r.generated for r in results]}")
    rows = [(m, [r for r in records if r["method"] == m and r["length"] == args.length]) for m in methods]
    base_time = sum(r["seconds"] for r in rows[0][1])
    print("| method | correct / total | depths missed | time vs first row |\n|---|---|---|---|")
    for method, results in rows:
        missed = ", ".join(f"{r['depth']:.0%}" for r in results if not r["correct"]) or "-"
        seconds = sum(r["seconds"] for r in results)
        print(
            f"| {method} | {sum(r['correct'] for r in results)}/{len(results)} | {missed} "
            f"| {seconds / base_time:.2f}x |"
        )


if __name__ == "__main__":
    main()
