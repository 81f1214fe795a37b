"""``ctxext unpatch``: give back a patched directory's original config.json."""

from __future__ import annotations

import argparse

HELP = "give back a patched directory's original config.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory patched by 'ctxext patch'")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.directory import unpatch_directory

    print(f"unpatched {args.model}: {unpatch_directory(args.model)}")
    return 0
