"""``ctxext finetune``: extend a model and fine-tune a LoRA adapter with a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

HELP = "extend a model and fine-tune a LoRA adapter with a recipe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument("--recipe", default="pose-lora", help="pose-lora (default), longlora-lite or pi-lora")
    p.add_argument("--method", help="extension method (default: the recipe's)")
    options.add_lengths(p, required=True)
    options.add_replace(p)
    p.add_argument("--data", required=True, help="text file, .jsonl file ('text' field) or saved HF dataset folder")
    p.add_argument("--out", required=True, type=Path, help="new folder for the adapter (or the run to --resume)")
    p.add_argument("--steps", type=int, required=True, help="optimiser steps")
    p.add_argument("--seq-len", type=int, help="training window in tokens (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="windows per micro-batch (default: the recipe's)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step (default: the recipe's)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default: the recipe's)")
    p.add_argument("--save-every", type=int, default=0, help="write a checkpoint every N steps (default: never)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--merge", action="store_true", help="also save a merged standalone checkpoint in OUT/merged")
    p.add_argument("--eval-length", type=int, help="held-out perplexity window (default: the target length)")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before and after training")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 on GPUs that support it, else fp32",
    )
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    options.add_seed(p)


def run(args: argparse.Namespace) -> int:
    from ..recipes import finetune

    result = finetune(
        args.model,
        args.data,
        args.out,
        recipe=args.recipe,
        method=args.method,
        factor=args.factor,
        target_length=args.target_length,
        original_length=args.original_length,
        replace=args.replace,
        steps=args.steps,
        merge=args.merge,
        resume=args.resume,
        save_every=args.save_every,
        eval_length=args.eval_length,
        evaluate=not args.no_eval,
        precision=args.precision,
        seed=args.seed,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lora_r=args.lora_r,
    )
    print(f"adapter saved to {result.out} ({result.steps} steps, {result.tokens_per_second:.0f} tokens/s)")
    if result.perplexity_before is not None:
        print(
            f"perplexity at {result.eval_length} tokens: {result.perplexity_before:.3f} before, "
            f"{result.perplexity_after:.3f} after"
        )
    if result.merged is not None:
        print(f"merged checkpoint: {result.merged}")
    return 0
