"""``ctxext eval``: the before/after evaluation (passkey, RULER-style suite, perplexity, lm-eval) of methods."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

HELP = "before/after evaluation: passkey, RULER-style suite, perplexity, lm-eval"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--method",
        help="extension method compared with the unpatched model (auto: the cached "
        "'ctxext tune' winner, else the rule in ctxext/auto.py)",
    )
    which.add_argument("--methods", help="comma-separated methods, side by side on the same prompts")
    options.add_lengths(p, required=False, original=False)
    p.add_argument(
        "--tasks",
        default="passkey",
        help="comma-separated: passkey, ruler, ruler-synthetic, ppl, "
        "or single RULER-style tasks (niah_single_1, vt, cwe, ...) (default passkey)",
    )
    p.add_argument("--lengths", default="4k", help="comma-separated prompt lengths / ppl windows, e.g. 4k,8k,16k")
    p.add_argument("--samples", type=int, default=5, help="samples per task and length (default 5)")
    options.add_depths(p, allow_random=True)
    options.add_seed(p)
    p.add_argument("--out", type=Path, default=Path("eval-report"), help="report directory; rerun to resume")
    options.add_runtime(p)
    options.add_replace(p)
    options.add_threshold(p)
    p.add_argument("--ppl-stride", type=int, default=256, help="sliding-window stride (default 256)")
    p.add_argument("--ppl-windows", type=int, default=1, help="sliding windows per length (default 1)")
    p.add_argument("--ppl-bucket", type=int, default=1024, help="position bucket for NLL per position (default 1024)")
    corpus = p.add_mutually_exclusive_group()
    corpus.add_argument("--text-file", help="perplexity corpus (default: CPython's pydoc topics prose)")
    corpus.add_argument("--text-dataset", help="perplexity corpus: a datasets.save_to_disk directory, DIR[:column]")
    p.add_argument(
        "--backend",
        default="transformers",
        help="where the prompts run: transformers (in this process), vllm or llama.cpp (the engine in its own "
        "Python; records of several backends in one --out are compared in the report) (default transformers)",
    )
    p.add_argument(
        "--engine-python",
        help="the Python that has the engine installed (default: .engines/<vllm|llama>/bin/python, else this one)",
    )
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-eval tasks (ours: ctxext_passkey, ctxext_ruler, ...)")
    p.add_argument("--lm-eval-limit", type=int, help="lm-eval documents per task")
    options.add_method_parameters(p)


def run(args: argparse.Namespace) -> int:
    from ..eval.agreement import describe
    from ..eval.lengths import parse_lengths
    from ..eval.runner import EvalConfig, run
    from ..eval.tasks import expand_tasks

    config = EvalConfig(
        model=args.model,
        out=args.out,
        methods=options.split_list(args.methods or args.method),
        factor=args.factor,
        target_length=args.target_length,
        params=options.method_params(args),
        tasks=expand_tasks(args.tasks),
        lengths=parse_lengths(args.lengths),
        samples=args.samples,
        depths=options.parse_depths(args.depths),
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        replace=args.replace,
        ppl_stride=args.ppl_stride,
        ppl_windows=args.ppl_windows,
        ppl_bucket=args.ppl_bucket,
        text_file=args.text_file,
        text_dataset=args.text_dataset,
        threshold=args.threshold,
        lm_eval_tasks=options.split_list(args.lm_eval_tasks),
        lm_eval_limit=args.lm_eval_limit,
        backend=args.backend,
        engine_python=args.engine_python,
    )
    data = run(config)
    if config.auto:
        print(f"auto chose {config.auto['chose']} {config.auto['params']}: {config.auto['reason']}")
    for row in data["backends"]:
        if row["differs"]:
            print(describe(row))
    print(f"report: {config.out / 'report.md'} (data: report.json, pictures: *.png)")
    return 0
