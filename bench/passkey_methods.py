"""Passkey retrieval on SmolLM2-135M-Instruct, unpatched and with each extension method.

    .venv/bin/python bench/passkey_methods.py --length 1500 --factor 2
    python bench/passkey_methods.py --length 16000 --factor 2 --device cuda --model PATH.gguf

Prints a markdown table (correct/total per method and the forward+generate wall time
relative to the unpatched model in the same run) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

import ctxext
from ctxext.checkpoint import resolve_model_path
from ctxext.default_model import default_model_path
from ctxext.eval.passkey import run_passkey

PARAMS = {"longrope": {"long_factor": 2.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1500)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--methods", default=",".join(ctxext.list_methods()))
    parser.add_argument("--model", help="a .gguf file or model directory (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    depths = [float(d) for d in args.depths.split(",")]
    location = resolve_model_path(args.model) if args.model else resolve_model_path(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    model = ctxext.from_pretrained(args.model or default_model_path(), dtype=torch.float32).to(args.device).eval()
    rows = []
    for method in tqdm(["unpatched", *args.methods.split(",")], desc="methods"):
        if method != "unpatched":
            ctxext.extend(model, method, factor=args.factor, replace=True, **PARAMS.get(method, {}))
        start = time.perf_counter()
        results = run_passkey(model, tokenizer, args.length, depths, seed=0)
        rows.append((method, results, time.perf_counter() - start))
        tqdm.write(f"{method}: {[r.correct for r in results]} {[r.generated for r in results]}")
    base_time = rows[0][2]
    print("| method | correct / total | depths missed | time vs unpatched |\n|---|---|---|---|")
    for method, results, seconds in rows:
        missed = ", ".join(f"{r.depth:.0%}" for r in results if not r.correct) or "-"
        print(f"| {method} | {sum(r.correct for r in results)}/{len(results)} | {missed} | {seconds / base_time:.2f}x |")


if __name__ == "__main__":
    main()
