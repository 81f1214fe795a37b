"""``ctxext passkey``: a quick passkey retrieval check of a (patched) checkpoint as it loads, no report."""

from __future__ import annotations

import argparse

from . import options

HELP = "passkey retrieval check (greedy, KV cache)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument("--length", type=int, default=1500, help="prompt length in tokens (default 1500)")
    p.add_argument("--depths", default="0,0.5", help="comma-separated needle depths in [0, 1] (default 0,0.5)")
    options.add_runtime(p)
    options.add_seed(p)


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import passkey_check

    results = passkey_check(
        args.model,
        args.length,
        options.parse_depths(args.depths, allow_random=False),
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
    )
    for r in results:
        print(
            f"length {r.n_tokens:>6} depth {r.depth:4.0%} key {r.expected} -> {r.generated.strip()!r} "
            f"{'ok' if r.correct else 'WRONG'}"
        )
    print(f"passkey: {sum(r.correct for r in results)}/{len(results)} correct")
    return 0
