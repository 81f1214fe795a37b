"""``ctxext probe``: the effective retrieval length of a model as it loads, on a ladder of lengths."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

HELP = "effective retrieval length: passkey and niah_single_1 on a ladder of lengths up to the model's context length"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    ladder = p.add_mutually_exclusive_group()
    ladder.add_argument(
        "--lengths",
        help="comma-separated lengths, e.g. 1k,2k,4k, instead of the default ladder "
        "(L/8, L/4, L/2, 3L/4, L of the context length L, without those too short for the prompts)",
    )
    ladder.add_argument(
        "--beyond",
        type=float,
        metavar="X",
        help="continue the default ladder past L in steps of L/2 up to X x L (e.g. 2)",
    )
    options.add_depths(p, allow_random=False)
    p.add_argument(
        "--samples",
        type=int,
        default=2,
        help="keys per depth (default 2): depths x samples prompts per task and length",
    )
    options.add_threshold(p)
    options.add_seed(p)
    p.add_argument("--out", type=Path, help="run directory (default probe-<model name>); rerun to resume")
    options.add_runtime(p)
    p.add_argument(
        "--record",
        action="store_true",
        help="store the effective length in MODEL's ctxext patch "
        "record (config.json of a patched directory), where 'ctxext info' shows it",
    )


def run(args: argparse.Namespace) -> int:
    from ..eval.lengths import parse_lengths
    from ..eval.probe import probe

    result = probe(
        args.model,
        out=args.out,
        lengths=parse_lengths(args.lengths) if args.lengths else None,
        beyond=args.beyond,
        depths=options.parse_depths(args.depths, allow_random=False),
        samples=args.samples,
        threshold=args.threshold,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        record=args.record,
    )
    print("\n".join(result.lines()))
    return 0
