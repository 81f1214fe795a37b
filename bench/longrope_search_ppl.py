"""LongRoPE's factor search on a real checkpoint with a fixed plan, then the perplexity of the factors it found
beside ctxext's ``pi``, ``ntk`` and ``yarn`` at the same target length, on the same windows of the same text.

    .venv/bin/python bench/longrope_search_ppl.py --target-length 16384 --population 4 --iterations 1 \\
        --windows 1 --out build/longrope-16k --factors docs/records/longrope-factors-16k.json

A fixed population and iteration count (``ctxext tune --methods longrope`` sizes them from a time budget
instead) make the run the same on a busy or an idle machine. The search's scores are logged in
``OUT/records.jsonl`` (a rerun resumes), the comparison goes to ``OUT/comparison.json`` and stdout as a
markdown table, and the found factors to ``--factors`` (the JSON list ``--long-factor @FILE`` takes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--target-length", type=int, required=True)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--windows", type=int, default=1, help="perplexity windows of the target length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="run folder (records.jsonl; rerun to resume)")
    parser.add_argument("--factors", type=Path, required=True, help="where the found long_factor list goes")
    args = parser.parse_args()

    import torch

    from ctxext import extend, restore
    from ctxext.checkpoint.atomic import write_json
    from ctxext.checkpoint.locations import resolve_model_path
    from ctxext.eval import perplexity
    from ctxext.eval.longrope_search import search
    from ctxext.eval.store import RecordStore
    from ctxext.model.loading import load_tokenizer, load_weights

    tokenizer = load_tokenizer(resolve_model_path(args.model))
    model = load_weights(args.model, dtype=torch.float32).eval()
    text, source = perplexity.load_corpus()
    ids = perplexity.text_ids(tokenizer, text)
    settings = {"model": args.model, "seed": args.seed, "dtype": "float32", "text": source}
    with RecordStore(args.out, settings) as store:
        found = search(
            model,
            ids,
            args.target_length,
            store,
            population=args.population,
            iterations=args.iterations,
            windows=args.windows,
            seed=args.seed,
        )
    write_json(args.factors, found.factors)
    rows = {"longrope (searched)": (found.perplexity, found.seconds / max(found.plan.candidates, 1))}
    rows.update({f"longrope-form {name} (search start)": (value, None) for name, value in found.start.items()})
    for method in ("pi", "ntk", "yarn"):
        extend(model, method, target_length=args.target_length)
        started = time.perf_counter()
        value = perplexity.perplexity(model, ids, args.target_length, max_windows=args.windows)
        rows[method] = (value, time.perf_counter() - started)
        restore(model)
    write_json(
        args.out / "comparison.json",
        {
            "model": args.model,
            "target_length": args.target_length,
            "windows": args.windows,
            "text": source,
            "search": found.summary(),
            "factors": found.factors,
            "perplexity": {name: value for name, (value, _) in rows.items()},
        },
    )
    windows = f"{args.windows} window(s) of {source}"
    print(f"| configuration | perplexity at {args.target_length} ({windows}) | s per forward |")
    print("|---|---|---|")
    for name, (value, seconds) in rows.items():
        print(f"| {name} | {value:.3f} | {'-' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
