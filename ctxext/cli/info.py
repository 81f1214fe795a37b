"""``ctxext info``: architecture, rotary setup, native and extended length, and the ctxext patch of a model."""

from __future__ import annotations

import argparse

from . import options

HELP = "architecture, rotary setup, native/extended length, ctxext patch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.info import describe

    rows = describe(args.model)
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")
    return 0
