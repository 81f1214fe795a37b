"""``ctxext tune``: rank methods and their main parameters for one target length; the winner feeds ``auto``."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

HELP = "rank methods and their main parameters for one target length; the winner feeds --method auto"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument("--target-length", type=int, required=True, help="target context length in tokens")
    p.add_argument("--methods", help="comma-separated methods to try (default: every tune candidate)")
    p.add_argument("--short-length", type=int, help="short-context check length (default min(L/2, 4096))")
    p.add_argument("--depths", default="0.25,0.75", help="needle depths (default 0.25,0.75)")
    p.add_argument("--samples", type=int, default=1, help="keys per depth and task (default 1)")
    p.add_argument(
        "--tasks",
        default="niah_single_2,niah_multikey_1",
        help="comma-separated retrieval tasks (default niah_single_2,niah_multikey_1: prose)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="successive halving: after the first round keep the better "
        "half of the candidates and give them more prompts while the budget lasts",
    )
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity tie-breaker at the target length")
    p.add_argument("--text-file", help="perplexity text (default: CPython's pydoc topics prose)")
    p.add_argument(
        "--search-minutes",
        type=float,
        help="budget of the longrope search (--methods longrope), which "
        "sizes its population and iterations (default 10)",
    )
    p.add_argument(
        "--search-windows",
        type=int,
        help="perplexity windows of the target length per longrope search candidate (default 2)",
    )
    p.add_argument("--refresh", action="store_true", help="ignore a cached result and measure again")
    options.add_seed(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("tune-report"),
        help="run directory: records (rerun to resume) and tune.json (default tune-report)",
    )
    options.add_runtime(p)


def run(args: argparse.Namespace) -> int:
    from ..eval.tune import tune

    result = tune(
        args.model,
        args.target_length,
        out=args.out,
        methods=options.split_list(args.methods) if args.methods is not None else None,
        short_length=args.short_length,
        depths=options.parse_depths(args.depths, allow_random=False),
        samples=args.samples,
        ppl=not args.no_ppl,
        tasks=options.split_list(args.tasks),
        text_file=args.text_file,
        search_minutes=args.search_minutes,
        search_windows=args.search_windows,
        budget_minutes=args.budget_minutes,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        refresh=args.refresh,
    )
    print("\n".join(result.lines()))
    return 0
