"""``ctxext eval`` flags -> :class:`EvalConfig`, with one-line errors for bad values."""

from __future__ import annotations

import argparse

from ..errors import CtxextError
from .lengths import parse_lengths
from .runner import EvalConfig
from .tasks import expand_tasks


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


def config_from_args(args: argparse.Namespace, params: dict) -> EvalConfig:
    methods = [m.strip() for m in (args.methods or args.method or "").split(",") if m.strip()]
    lm_eval_tasks = [t.strip() for t in (args.lm_eval_tasks or "").split(",") if t.strip()]
    return EvalConfig(
        model=args.model, out=args.out, methods=methods, factor=args.factor, target_length=args.target_length,
        params=params, tasks=expand_tasks(args.tasks), lengths=parse_lengths(args.lengths), samples=args.samples,
        depths=parse_depths(args.depths), seed=args.seed, dtype=args.dtype, device=args.device, replace=args.replace,
        ppl_stride=args.ppl_stride, ppl_windows=args.ppl_windows, ppl_bucket=args.ppl_bucket, text_file=args.text_file,
        text_dataset=args.text_dataset, threshold=args.threshold, lm_eval_tasks=lm_eval_tasks,
        lm_eval_limit=args.lm_eval_limit,
    )
