"""``ctxext patch``: extend a model directory's config.json, or a GGUF file into --output."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

HELP = "extend a model directory's config.json, or a GGUF file into --output"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument(
        "--method",
        required=True,
        help="extension method (see 'ctxext methods'), or auto: the cached "
        "'ctxext tune' winner for MODEL and the target length, else yarn",
    )
    options.add_lengths(p, required=True)
    p.add_argument(
        "--output",
        type=Path,
        help="write a patched copy here instead of editing MODEL in place; for a GGUF MODEL: a new "
        ".gguf (metadata patched for llama.cpp, tensors kept byte for byte) or a new directory "
        "(de-quantized safetensors)",
    )
    options.add_replace(p)
    p.add_argument("--rope-layer-types", help="comma-separated layer types to extend (per-layer-type configs)")
    options.add_runtime(p, device=False)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the config.json diff (GGUF to .gguf: the metadata diff) and write nothing",
    )
    p.add_argument(
        "--engine-config",
        choices=["sglang"],
        help="also write an engine's own section: sglang = dual_chunk_attention_config, so that SGLang "
        "serves a dca patch of a Qwen2/Qwen3 model with its own Dual Chunk Attention",
    )
    p.add_argument(
        "--remote-code",
        action="store_true",
        help="attention-level methods: also write a module and config.json's auto_map, so that stock "
        "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) loads the patch "
        "(lm-eval's hf model, pipelines, transformers serve; ctxext must be installed)",
    )
    options.add_method_parameters(p)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.patch import patch

    result = patch(
        args.model,
        args.method,
        factor=args.factor,
        target_length=args.target_length,
        original_length=args.original_length,
        output=args.output,
        replace=args.replace,
        rope_layer_types=options.split_list(args.rope_layer_types) or None,
        dry_run=args.dry_run,
        dtype=args.dtype,
        engine_config=args.engine_config,
        remote_code=args.remote_code,
        **options.method_params(args),
    )
    if result.diff is not None:
        print(result.diff)
        return 0
    record = result.record
    print(
        f"patched {args.model} -> {result.path}: {record.method} x{record.factor:g}, "
        f"{record.original_length} -> {record.target_length} tokens"
    )
    if record.auto:
        print(f"auto chose {record.auto['chose']}: {record.auto['reason']}")
    if result.serve_command is not None:
        print(f"serve it with llama.cpp: {result.serve_command}")
        if not result.stock_loadable:
            print(
                f"note: transformers' GGUF loader ignores rope scaling metadata and would load {result.path.name} "
                "unscaled; for transformers, patch into a directory (--output DIR) instead"
            )
    elif not result.stock_loadable:
        print(f"note: '{record.method}' needs ctxext to load: use ctxext.from_pretrained('{result.path}')")
    for line in result.serve_commands:
        print(f"serve: {line}")
    return 0
