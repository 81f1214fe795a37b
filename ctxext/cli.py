"""The ``ctxext`` command line: patch, unpatch, info, methods, passkey, probe, eval, tune, finetune.

Each subcommand parses its flags, makes one library call and prints the result; the work
lives in the library (``patching``, ``info``, ``eval``, ``recipes``). Every bad input ends
with one ``ctxext: error: ...`` line and exit status 2, files untouched; Ctrl-C or SIGTERM
end with one line and exit status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import typing
from pathlib import Path
from typing import Any

from .errors import CtxextError
from .eval.constants import DEFAULT_DEPTHS, THRESHOLD
from .info import describe
from .patching import DTYPES, patch, unpatch_directory
from .registry import all_methods
from .version import __version__

MODEL_HELP = "model directory, .gguf file, or 'smollm2' (the embedded default model)"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_numbers(text: str) -> list[float] | float | str:
    """'1.5' -> 1.5; '1,1.2,1.4' -> list; '@factors.json' stays as it is: the method reads the file."""
    if text.startswith("@"):
        return text
    try:
        if "," in text:
            return [float(v) for v in text.split(",") if v.strip()]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, a comma-separated list or @file.json, got '{text}'") \
            from None


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")
    return value in ("true", "1", "yes", "on")


def _parse_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def _parameter_type(hint) -> Any:
    """argparse type for a method parameter's annotation."""
    if hint is bool:
        return _parse_bool
    if hint is str:
        return str
    if "list" in str(hint):
        return _parse_numbers
    if hint is int or str(hint) in ("int | None", "typing.Optional[int]"):
        return _parse_whole
    return float


def _method_parameters() -> dict[str, tuple[dataclasses.Field, list[str], Any]]:
    """Every method parameter name -> (field, methods taking it, argparse type)."""
    found: dict[str, tuple[dataclasses.Field, list[str], Any]] = {}
    for method in all_methods():
        hints = typing.get_type_hints(method.config_class)
        for f in dataclasses.fields(method.config_class):
            kind = _parameter_type(hints[f.name])
            entry = found.setdefault(f.name, (f, [], kind))
            entry[1].append(method.name)
    return found


# -- flags shared by several subcommands: each is defined here once --------------------------
def _add_model(p) -> None:
    p.add_argument("model", help=MODEL_HELP)


def _add_lengths(p, required: bool, original: bool = True) -> None:
    length = p.add_mutually_exclusive_group(required=required)
    length.add_argument("--factor", type=float, help="scale factor: target length / original length")
    length.add_argument("--target-length", type=int, help="target context length in tokens")
    if original:
        p.add_argument("--original-length", type=int, help="native context length (default: max_position_embeddings)")


def _add_replace(p) -> None:
    p.add_argument("--replace", action="store_true", help="replace an existing ctxext patch or native rope scaling")


def _add_runtime(p, device: bool = True) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default float32)")
    if device:
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _add_seed(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_depths(p, allow_random: bool) -> None:
    extra = ", or 'random'" if allow_random else ""
    p.add_argument("--depths", default=",".join(f"{d:g}" for d in DEFAULT_DEPTHS),
                   help=f"needle depths for passkey and single-needle tasks, cycled over samples{extra} "
                        f"(default {','.join(f'{d:g}' for d in DEFAULT_DEPTHS)})")


def _add_threshold(p) -> None:
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"score (0-100) the effective length's lengths stay above (default {THRESHOLD:g}, RULER's)")


def _add_method_parameters(p) -> None:
    group = p.add_argument_group("method parameters")
    for name, (f, methods, kind) in sorted(_method_parameters().items()):
        group.add_argument(_flag(name), dest=f"param_{name}", type=kind, default=None, metavar=name.upper(),
                           help=f"{f.metadata.get('help', '')} [{', '.join(methods)}]")


# -- one parser per subcommand -----------------------------------------------------------------
def _add_patch_parser(commands) -> None:
    p = commands.add_parser("patch", help="extend a model directory's config.json, or a GGUF file into --output")
    _add_model(p)
    p.add_argument("--method", required=True, help="extension method (see 'ctxext methods'), or auto: the cached "
                   "'ctxext tune' winner for MODEL and the target length, else yarn")
    _add_lengths(p, required=True)
    p.add_argument("--output", type=Path,
                   help="write a patched copy here instead of editing MODEL in place; for a GGUF MODEL: a new "
                        ".gguf (metadata patched for llama.cpp, tensors kept byte for byte) or a new directory "
                        "(de-quantized safetensors)")
    _add_replace(p)
    p.add_argument("--rope-layer-types", help="comma-separated layer types to extend (per-layer-type configs)")
    _add_runtime(p, device=False)
    p.add_argument("--dry-run", action="store_true",
                   help="print the config.json diff (GGUF to .gguf: the metadata diff) and write nothing")
    p.add_argument("--engine-config", choices=["sglang"],
                   help="also write an engine's own section: sglang = dual_chunk_attention_config, so that SGLang "
                        "serves a dca patch of a Qwen2/Qwen3 model with its own Dual Chunk Attention")
    _add_method_parameters(p)


def _add_passkey_parser(commands) -> None:
    p = commands.add_parser("passkey", help="passkey retrieval check (greedy, KV cache)")
    _add_model(p)
    p.add_argument("--length", type=int, default=1500, help="prompt length in tokens (default 1500)")
    p.add_argument("--depths", default="0,0.5", help="comma-separated needle depths in [0, 1] (default 0,0.5)")
    _add_runtime(p)
    _add_seed(p)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other ctxext error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"ctxext: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctxext", description="Extend the context window of RoPE language models.")
    parser.add_argument("--version", action="version", version=f"ctxext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_patch_parser(commands)
    p = commands.add_parser("unpatch", help="give back a patched directory's original config.json")
    p.add_argument("model", help="model directory patched by 'ctxext patch'")
    commands.add_parser("methods", help="list the methods, their parameters and papers")
    p = commands.add_parser("info", help="architecture, rotary setup, native/extended length, ctxext patch")
    _add_model(p)
    _add_passkey_parser(commands)
    _add_probe_parser(commands)
    _add_eval_parser(commands)
    _add_tune_parser(commands)
    _add_finetune_parser(commands)
    return parser


def _add_eval_parser(commands) -> None:
    p = commands.add_parser("eval", help="before/after evaluation: passkey, RULER-style suite, perplexity, lm-eval")
    _add_model(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--method", help="extension method compared with the unpatched model (auto: the cached "
                       "'ctxext tune' winner, else dca with temperature)")
    which.add_argument("--methods", help="comma-separated methods, side by side on the same prompts")
    _add_lengths(p, required=False, original=False)
    p.add_argument("--tasks", default="passkey", help="comma-separated: passkey, ruler, ruler-synthetic, ppl, "
                   "or single RULER-style tasks (niah_single_1, vt, cwe, ...) (default passkey)")
    p.add_argument("--lengths", default="4k", help="comma-separated prompt lengths / ppl windows, e.g. 4k,8k,16k")
    p.add_argument("--samples", type=int, default=5, help="samples per task and length (default 5)")
    _add_depths(p, allow_random=True)
    _add_seed(p)
    p.add_argument("--out", type=Path, default=Path("eval-report"), help="report directory; rerun to resume")
    _add_runtime(p)
    _add_replace(p)
    _add_threshold(p)
    p.add_argument("--ppl-stride", type=int, default=256, help="sliding-window stride (default 256)")
    p.add_argument("--ppl-windows", type=int, default=1, help="sliding windows per length (default 1)")
    p.add_argument("--ppl-bucket", type=int, default=1024, help="position bucket for NLL per position (default 1024)")
    corpus = p.add_mutually_exclusive_group()
    corpus.add_argument("--text-file", help="perplexity corpus (default: CPython's pydoc topics prose)")
    corpus.add_argument("--text-dataset", help="perplexity corpus: a datasets.save_to_disk directory, DIR[:column]")
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-eval tasks (ours: ctxext_passkey, ctxext_ruler, ...)")
    p.add_argument("--lm-eval-limit", type=int, help="lm-eval documents per task")
    _add_method_parameters(p)


def _add_tune_parser(commands) -> None:
    p = commands.add_parser("tune", help="rank methods and their main parameters for one target length; the winner "
                                         "feeds --method auto")
    _add_model(p)
    p.add_argument("--target-length", type=int, required=True, help="target context length in tokens")
    p.add_argument("--methods", help="comma-separated methods to try (default: every tune candidate)")
    p.add_argument("--short-length", type=int, help="short-context check length (default min(L/2, 4096))")
    p.add_argument("--depths", default="0.25,0.75", help="needle depths (default 0.25,0.75)")
    p.add_argument("--samples", type=int, default=1, help="keys per depth and task (default 1)")
    p.add_argument("--tasks", default="passkey,niah_single_1",
                   help="passkey, niah_single_1 or both (default both)")
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity tie-breaker at the target length")
    p.add_argument("--text-file", help="perplexity text (default: CPython's pydoc topics prose)")
    p.add_argument("--search-minutes", type=float, help="budget of the longrope search (--methods longrope), which "
                   "sizes its population and iterations (default 10)")
    p.add_argument("--search-windows", type=int,
                   help="perplexity windows of the target length per longrope search candidate (default 2)")
    p.add_argument("--refresh", action="store_true", help="ignore a cached result and measure again")
    _add_seed(p)
    p.add_argument("--out", type=Path, default=Path("tune-report"),
                   help="run directory: records (rerun to resume) and tune.json (default tune-report)")
    _add_runtime(p)


def _add_probe_parser(commands) -> None:
    p = commands.add_parser("probe", help="effective retrieval length: passkey and niah_single_1 on a ladder of "
                                          "lengths up to the model's context length")
    _add_model(p)
    ladder = p.add_mutually_exclusive_group()
    ladder.add_argument("--lengths", help="comma-separated lengths, e.g. 1k,2k,4k, instead of the default ladder "
                        "(L/8, L/4, L/2, 3L/4, L of the context length L, without those too short for the prompts)")
    ladder.add_argument("--beyond", type=float, metavar="X",
                        help="continue the default ladder past L in steps of L/2 up to X x L (e.g. 2)")
    _add_depths(p, allow_random=False)
    p.add_argument("--samples", type=int, default=2, help="keys per depth (default 2): depths x samples prompts "
                   "per task and length")
    _add_threshold(p)
    _add_seed(p)
    p.add_argument("--out", type=Path, help="run directory (default probe-<model name>); rerun to resume")
    _add_runtime(p)
    p.add_argument("--record", action="store_true", help="store the effective length in MODEL's ctxext patch "
                   "record (config.json of a patched directory), where 'ctxext info' shows it")


def _add_finetune_parser(commands) -> None:
    p = commands.add_parser("finetune", help="extend a model and fine-tune a LoRA adapter with a recipe")
    _add_model(p)
    p.add_argument("--recipe", default="pose-lora", help="pose-lora (default), longlora-lite or pi-lora")
    p.add_argument("--method", help="extension method (default: the recipe's)")
    _add_lengths(p, required=True)
    _add_replace(p)
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
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on GPUs that support it, else fp32")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    _add_seed(p)


def _collect_params(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}


def _layer_types(args: argparse.Namespace) -> list[str] | None:
    return args.rope_layer_types.split(",") if args.rope_layer_types else None


def cmd_patch(args: argparse.Namespace) -> int:
    result = patch(args.model, args.method, factor=args.factor, target_length=args.target_length,
                   original_length=args.original_length, output=args.output, replace=args.replace,
                   rope_layer_types=_layer_types(args), dry_run=args.dry_run, dtype=args.dtype,
                   engine_config=args.engine_config, **_collect_params(args))
    if result.diff is not None:
        print(result.diff)
        return 0
    record = result.record
    print(f"patched {args.model} -> {result.path}: {record.method} x{record.factor:g}, "
          f"{record.original_length} -> {record.target_length} tokens")
    if record.auto:
        print(f"auto chose {record.auto['chose']}: {record.auto['reason']}")
    if result.serve_command is not None:
        print(f"serve it with llama.cpp: {result.serve_command}")
        if not result.stock_loadable:
            print(f"note: transformers' GGUF loader ignores rope scaling metadata and would load {result.path.name} "
                  "unscaled; for transformers, patch into a directory (--output DIR) instead")
    elif not result.stock_loadable:
        print(f"note: '{record.method}' needs ctxext to load: use ctxext.from_pretrained('{result.path}')")
    for line in result.serve_commands:
        print(f"serve: {line}")
    return 0


def cmd_unpatch(args: argparse.Namespace) -> int:
    how = unpatch_directory(args.model)
    print(f"unpatched {args.model}: {how}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for method in all_methods():
        aliases = f" (alias: {', '.join(method.aliases)})" if method.aliases else ""
        loads = "stock transformers reloads it" if method.stock_loadable else "reload with ctxext.from_pretrained"
        print(f"{method.name}{aliases}: {method.summary}")
        print(f"    paper: {method.paper}; {loads}")
        for f in dataclasses.fields(method.config_class):
            print(f"    {_flag(f.name)} (default {f.default if f.default is not dataclasses.MISSING else f.default_factory()}): "
                  f"{f.metadata.get('help', '')}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    rows = describe(args.model)
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")
    return 0


def cmd_passkey(args: argparse.Namespace) -> int:
    from .eval.cli_args import parse_depths
    from .eval.runner import passkey_check

    results = passkey_check(args.model, args.length, parse_depths(args.depths, allow_random=False), seed=args.seed,
                            dtype=args.dtype, device=args.device)
    for r in results:
        print(f"length {r.n_tokens:>6} depth {r.depth:4.0%} key {r.expected} -> {r.generated.strip()!r} "
              f"{'ok' if r.correct else 'WRONG'}")
    print(f"passkey: {sum(r.correct for r in results)}/{len(results)} correct")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .eval.cli_args import parse_depths
    from .eval.lengths import parse_lengths
    from .eval.probe import probe

    result = probe(args.model, out=args.out, lengths=parse_lengths(args.lengths) if args.lengths else None,
                   beyond=args.beyond, depths=parse_depths(args.depths, allow_random=False), samples=args.samples,
                   threshold=args.threshold, seed=args.seed, dtype=args.dtype, device=args.device, record=args.record)
    print("\n".join(result.lines()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.cli_args import config_from_args
    from .eval.runner import run

    config = config_from_args(args, _collect_params(args))
    run(config)
    if config.auto:
        print(f"auto chose {config.auto['chose']} {config.auto['params']}: {config.auto['reason']}")
    print(f"report: {config.out / 'report.md'} (data: report.json, pictures: *.png)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .eval.cli_args import parse_depths
    from .eval.tune import tune

    result = tune(args.model, args.target_length, out=args.out,
                  methods=[m for m in args.methods.split(",") if m.strip()] if args.methods is not None else None,
                  short_length=args.short_length, depths=parse_depths(args.depths, allow_random=False),
                  samples=args.samples, ppl=not args.no_ppl, tasks=[t for t in args.tasks.split(",") if t.strip()],
                  text_file=args.text_file, search_minutes=args.search_minutes, search_windows=args.search_windows,
                  seed=args.seed, dtype=args.dtype, device=args.device, refresh=args.refresh)
    print("\n".join(result.lines()))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .recipes import finetune

    result = finetune(
        args.model, args.data, args.out, recipe=args.recipe, method=args.method, factor=args.factor,
        target_length=args.target_length, original_length=args.original_length, replace=args.replace,
        steps=args.steps, merge=args.merge, resume=args.resume, save_every=args.save_every,
        eval_length=args.eval_length, evaluate=not args.no_eval, precision=args.precision, seed=args.seed,
        gradient_checkpointing=not args.no_gradient_checkpointing, seq_len=args.seq_len, lr=args.lr,
        warmup_steps=args.warmup_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lora_r=args.lora_r,
    )
    print(f"adapter saved to {result.out} ({result.steps} steps, {result.tokens_per_second:.0f} tokens/s)")
    if result.perplexity_before is not None:
        print(f"perplexity at {result.eval_length} tokens: {result.perplexity_before:.3f} before, "
              f"{result.perplexity_after:.3f} after")
    if result.merged is not None:
        print(f"merged checkpoint: {result.merged}")
    return 0


COMMANDS = {"patch": cmd_patch, "unpatch": cmd_unpatch, "methods": cmd_methods, "info": cmd_info,
            "passkey": cmd_passkey, "probe": cmd_probe, "eval": cmd_eval, "tune": cmd_tune,
            "finetune": cmd_finetune}


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # so that SIGTERM cleans up staged writes like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # config warnings would bury our one-line errors
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return COMMANDS[args.command](args)
    except CtxextError as exc:
        print(f"ctxext: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"ctxext: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("ctxext: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 2


if __name__ == "__main__":
    sys.exit(main())
