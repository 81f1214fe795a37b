"""Flags shared by several subcommands, each defined here once, and the parsers of their values."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..core.validate import DTYPES
from ..errors import CtxextError
from ..eval.constants import DEFAULT_DEPTHS, THRESHOLD

MODEL_HELP = "model directory, .gguf file, or 'smollm2' (the embedded default model)"


def flag(name: str) -> str:
    """A parameter name as its command-line flag: ``beta_fast`` -> ``--beta-fast``."""
    return "--" + name.replace("_", "-")


def parse_numbers(text: str) -> list[float] | float | str:
    """'1.5' -> 1.5; '1,1.2,1.4' -> list; '@factors.json' stays as it is: the method reads the file."""
    if text.startswith("@"):
        return text
    try:
        if "," in text:
            return [float(v) for v in text.split(",") if v.strip()]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, a comma-separated list or @file.json, got '{text}'"
        ) from None


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value in ("true", "1", "yes", "on")


def parse_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def parse_depths(text: str, allow_random: bool = True) -> list[float] | None:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; 'random' -> None (random depths) where allowed."""
    if allow_random and text.strip().lower() == "random":
        return None
    try:
        depths = [float(d) for d in text.split(",") if d.strip()]
    except ValueError:
        depths = []
    if not depths:
        extra = " or 'random'" if allow_random else ""
        raise CtxextError(f"--depths must be comma-separated numbers in [0, 1]{extra}, got {text!r}")
    return depths


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']; None -> []."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parameter_type(hint) -> Any:
    """argparse type for a method parameter's annotation."""
    if hint is bool:
        return parse_bool
    if hint is str:
        return str
    if "list" in str(hint):
        return parse_numbers
    if hint is int or str(hint) in ("int | None", "typing.Optional[int]"):
        return parse_whole
    return float


def _method_parameters() -> dict[str, tuple[dataclasses.Field, list[str], Any]]:
    """Every method parameter name -> (field, methods taking it, argparse type)."""
    from ..core.registry import all_methods

    found: dict[str, tuple[dataclasses.Field, list[str], Any]] = {}
    for method in all_methods():
        hints = typing.get_type_hints(method.config_class)
        for f in dataclasses.fields(method.config_class):
            entry = found.setdefault(f.name, (f, [], _parameter_type(hints[f.name])))
            entry[1].append(method.name)
    return found


def add_model(p) -> None:
    p.add_argument("model", help=MODEL_HELP)


def add_lengths(p, required: bool, original: bool = True) -> None:
    length = p.add_mutually_exclusive_group(required=required)
    length.add_argument("--factor", type=float, help="scale factor: target length / original length")
    length.add_argument("--target-length", type=int, help="target context length in tokens")
    if original:
        p.add_argument("--original-length", type=int, help="native context length (default: max_position_embeddings)")


def add_replace(p) -> None:
    p.add_argument("--replace", action="store_true", help="replace an existing ctxext patch or native rope scaling")


def add_runtime(p, device: bool = True) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default float32)")
    if device:
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_seed(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_depths(p, allow_random: bool) -> None:
    extra = ", or 'random'" if allow_random else ""
    p.add_argument(
        "--depths",
        default=",".join(f"{d:g}" for d in DEFAULT_DEPTHS),
        help=f"needle depths for passkey and single-needle tasks, cycled over samples{extra} "
        f"(default {','.join(f'{d:g}' for d in DEFAULT_DEPTHS)})",
    )


def add_threshold(p) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=THRESHOLD,
        help=f"score (0-100) the effective length's lengths stay above (default {THRESHOLD:g}, RULER's)",
    )


def add_method_parameters(p) -> None:
    group = p.add_argument_group("method parameters")
    for name, (f, methods, kind) in sorted(_method_parameters().items()):
        group.add_argument(
            flag(name),
            dest=f"param_{name}",
            type=kind,
            default=None,
            metavar=name.upper(),
            help=f"{f.metadata.get('help', '')} [{', '.join(methods)}]",
        )


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method-parameter flags that were given, by parameter name."""
    return {k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
