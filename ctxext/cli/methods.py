"""``ctxext methods``: every registered method with its parameters, defaults and paper."""

from __future__ import annotations

import argparse
import dataclasses

from .options import flag

HELP = "list the methods, their parameters and papers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..core.registry import all_methods

    for method in all_methods():
        aliases = f" (alias: {', '.join(method.aliases)})" if method.aliases else ""
        loads = "stock transformers reloads it" if method.stock_loadable else "reload with ctxext.from_pretrained"
        print(f"{method.name}{aliases}: {method.summary}")
        print(f"    paper: {method.paper}; {loads}")
        for f in dataclasses.fields(method.config_class):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"    {flag(f.name)} (default {default}): {f.metadata.get('help', '')}")
    return 0
