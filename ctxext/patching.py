"""Patching checkpoints on disk: ``patch_directory``, ``patch_gguf``, ``unpatch_directory``.

A model directory is patched by rewriting config.json only (so stock transformers reloads
the extension; attention-level methods get just the record that ``ctxext.from_pretrained``
re-applies). A GGUF file is patched into a new .gguf whose tensors are the input's, byte for
byte, with the extension in its metadata as llama.cpp reads it (``gguf_export.py``), or loaded,
de-quantized, extended and saved as a new safetensors directory (any other output).
``patch`` picks between them for a path. Every check runs before anything is
written; writes are atomic (see ``atomic.py``); the original config.json is kept byte for
byte beside the patched one so that ``unpatch_directory`` gives it back.
``record_effective_length`` adds a measured effective length (``ctxext probe --record``)
to a patched directory's record.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import exclusive, staged
from .auto import is_auto, resolve
from .checkpoint import (
    BACKUP,
    check_writable,
    copy_model_dir,
    ensure_new_output,
    read_backup,
    read_config_json,
    recorded_original,
    resolve_model_path,
    unpatch_config,
    write_patched_config,
)
from .config import ExtensionRecord
from .errors import CtxextError
from .plan import ExtensionPlan, plan_extension, planned_extension, take_off_record
from .serving import DUAL_CHUNK, LEGACY_ROPE_TYPES, serve_commands, sglang_dual_chunk_config

DTYPES = ("float32", "bfloat16", "float16")
ENGINE_CONFIGS = (None, "sglang")  # engine sections patch_directory can write into config.json


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CtxextError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@dataclass
class PatchResult:
    """What a patch did: where it wrote, the record it wrote, and for a dry run the diff."""

    path: Path
    record: ExtensionRecord
    stock_loadable: bool  # stock transformers reproduces the patch from config.json (or GGUF) alone
    diff: str | None = None  # unified diff of config.json (GGUF: metadata), for dry runs (nothing written)
    serve_command: str | None = None  # GGUF output: the llama.cpp command that serves the extended file
    # model directory: per engine (transformers, vLLM, SGLang) the command that serves it, or why it cannot
    serve_commands: list[str] = field(default_factory=list)


def patch(
    model: str | Path,
    method: str,
    *,
    output: str | Path | None = None,
    dry_run: bool = False,
    dtype: str = "float32",
    engine_config: str | None = None,
    **options: Any,
) -> PatchResult:
    """Patch a model directory (``patch_directory``) or a GGUF file (``patch_gguf``) on disk.

    ``options`` are the lengths, ``replace``, ``rope_layer_types`` and the method's parameters,
    as for ``patch_directory``; ``engine_config`` too (directories only). A GGUF file goes to ``output``: a new .gguf (metadata patched,
    tensors kept) or a new directory (de-quantized safetensors).
    """
    if is_auto(method):
        if engine_config is not None:
            raise CtxextError("--engine-config needs a method of its own (sglang: --method dca), not auto")
        return _patch_auto(model, output=output, dry_run=dry_run, dtype=dtype, **options)
    location = resolve_model_path(model)
    if location.gguf_file is None:
        if output is not None and _is_gguf_name(output):
            raise CtxextError(f"{output}: a model directory is patched into a directory; converting it to GGUF "
                              "is llama.cpp's convert_hf_to_gguf.py, then patch that .gguf")
        return patch_directory(location.directory, method, output=output, dry_run=dry_run,
                               engine_config=engine_config, **options)
    if engine_config is not None:
        raise CtxextError("--engine-config writes an engine's section of config.json: it applies to model "
                          "directories, not GGUF files")
    if output is None:
        raise CtxextError("a GGUF file is never patched in place: give an output, a new .gguf file (metadata "
                          "patched, tensors kept) or a new directory (de-quantized safetensors)")
    if dry_run and not _is_gguf_name(output):
        raise CtxextError("a dry run of a GGUF file needs a .gguf output (it shows the metadata diff); "
                          "the safetensors export cannot be dry-run")
    return patch_gguf(model, output, method, dtype=dtype, dry_run=dry_run, **options)


def patch_directory(
    directory: str | Path,
    method: str,
    *,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    output: str | Path | None = None,
    replace: bool = False,
    rope_layer_types: list[str] | None = None,
    dry_run: bool = False,
    engine_config: str | None = None,
    **params: Any,
) -> PatchResult:
    """Extend a model directory by rewriting its config.json (in place, or in a copy at ``output``).

    An already patched directory is refused unless ``replace=True``, which patches the
    original config again. ``dry_run`` writes nothing and returns the config.json diff.
    ``engine_config="sglang"`` (with ``dca`` on a Qwen2/Qwen3 model) also writes SGLang's
    ``dual_chunk_attention_config``, so that SGLang serves the patch with its own DCA.
    """
    if engine_config not in ENGINE_CONFIGS:
        raise CtxextError(f"unknown engine config {engine_config!r}; choose from: {', '.join(ENGINE_CONFIGS[1:])}")
    location = resolve_model_path(directory)
    if location.gguf_file is not None:
        raise CtxextError(f"{directory}: a GGUF file, not a model directory; use patch_gguf")
    directory = location.directory
    raw, data = read_config_json(directory)
    config, saved = _unpatched_config(directory)
    if saved and not replace:
        raise CtxextError(f"{directory} is already patched with '{saved.method}'; use --replace or 'ctxext unpatch'")
    plan = plan_extension(config, method, factor=factor, target_length=target_length, original_length=original_length,
                          rope_layer_types=rope_layer_types, replace_native_scaling=replace, params=params)
    original_raw, original = raw, data
    if saved and (directory / BACKUP).exists():
        original_raw, original = read_backup(directory, saved)
    elif saved:  # the kept original is gone: rebuild it from the record, and keep no patched config as one
        original_raw, original = None, recorded_original(data, saved)
    patched = _patched_json(original, plan)
    if engine_config == "sglang":
        plan.record.replaced[DUAL_CHUNK] = copy.deepcopy(original.get(DUAL_CHUNK))
        patched[DUAL_CHUNK] = sglang_dual_chunk_config(patched)
        patched["ctxext"] = plan.record.to_dict()
    result = PatchResult(directory, plan.record, plan.method.stock_loadable)
    result.serve_commands = serve_commands(patched, directory if output is None else output)
    if dry_run:
        before = json.dumps(data, indent=2, sort_keys=True).splitlines()
        after = json.dumps(patched, indent=2, sort_keys=True).splitlines()
        result.diff = "\n".join(difflib.unified_diff(before, after, "config.json", "config.json (patched)",
                                                     lineterm=""))
        return result
    if output is not None:
        output = Path(output)
        copy_model_dir(directory, output)
        result.path = output
        write_patched_config(output, original_raw, patched)
        return result
    check_writable(directory)
    with exclusive(directory):
        if read_config_json(directory)[0] != raw:
            raise CtxextError(f"{directory / 'config.json'} changed while it was being patched; nothing written")
        write_patched_config(directory, original_raw, patched)
    return result


def patch_gguf(gguf: str | Path, output: str | Path, method: str, *, dtype: str = "float32",
               dry_run: bool = False, **options: Any) -> PatchResult:
    """Extend a GGUF checkpoint into ``output``: a new .gguf file, or else a new safetensors directory.

    An ``output`` ending in .gguf gets the input's tensors byte for byte (quantization kept) and
    the extension in its metadata, as llama.cpp reads it (``gguf_export.export_gguf``; methods
    that GGUF metadata cannot express are refused; ``dry_run`` returns the metadata diff). Any
    other ``output`` is a directory: the checkpoint is de-quantized to ``dtype``, extended and saved.
    ``options`` are ``extend()``'s: the lengths, ``replace``, ``rope_layer_types``, the method's parameters.
    """
    if _is_gguf_name(output):
        return _patch_gguf_file(gguf, output, method, dtype=dtype, dry_run=dry_run, **options)
    if dry_run:
        raise CtxextError("the safetensors export cannot be dry-run; give a .gguf output to see the metadata diff")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .api import extend

    location = resolve_model_path(gguf)
    if location.gguf_file is None:
        raise CtxextError(f"{gguf}: not a .gguf file")
    check_dtype(dtype)
    output = Path(output)
    ensure_new_output(output)
    config = AutoConfig.from_pretrained(location.directory, gguf_file=location.gguf_file)
    _check_options(config, method, **options)  # bad options fail before the weights load
    model = AutoModelForCausalLM.from_pretrained(location.directory, gguf_file=location.gguf_file,
                                                 dtype=getattr(torch, dtype))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise CtxextError("this GGUF was loaded with packed weights (GGUF kernels installed); cannot save it")
        quantizer.remove_quantization_config(model)  # the weights are plain de-quantized tensors already
    extend(model, method, **options)
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    with staged(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    record = ExtensionRecord.of(model.config)
    return PatchResult(output, record, True)


def _is_gguf_name(output: str | Path) -> bool:
    return Path(output).suffix.lower() == ".gguf"


def _patch_gguf_file(gguf: str | Path, output: str | Path, method: str, *, dtype: str, dry_run: bool,
                     **options: Any) -> PatchResult:
    from .gguf_export import export_gguf

    location = resolve_model_path(gguf)
    if location.gguf_file is None:
        raise CtxextError(f"{gguf}: not a .gguf file")
    if dtype != "float32":
        raise CtxextError(f"dtype {dtype} is for the safetensors export; a .gguf output keeps the file's tensors as "
                          "they are")
    exported, diff = export_gguf(location.directory / location.gguf_file, output, method, dry_run=dry_run, **options)
    return PatchResult(Path(output), exported.plan.record, exported.stock_loadable, diff=diff,
                       serve_command=exported.serve_command)


def unpatch_directory(directory: str | Path) -> str:
    """Give back a patched directory's original config.json; returns how it was done."""
    location = resolve_model_path(directory)
    if location.gguf_file is not None:
        raise CtxextError("GGUF files are never patched in place; nothing to unpatch")
    directory = location.directory
    _, data = read_config_json(directory)
    record = ExtensionRecord.of(data)
    if record is None:
        kept = f" ({BACKUP} there is left as it is)" if (directory / BACKUP).exists() else ""
        raise CtxextError(f"{directory}: config.json carries no ctxext patch{kept}")
    check_writable(directory)
    with exclusive(directory):
        return unpatch_config(directory, record)


def recordable_config(model: str | Path) -> tuple[Path, bytes]:
    """(directory, config.json bytes) of a model whose patch record can take an effective length.

    Only a ctxext-patched model directory has one: a directory without a record is refused (an
    effective length belongs to the patch it was measured with, and ``unpatch`` takes it away with
    the patch), and so is a GGUF file (never rewritten in place). Nothing is written.
    """
    location = resolve_model_path(model)
    if location.gguf_file is not None:
        raise CtxextError(f"{model}: a GGUF file is never rewritten in place, so it cannot record an effective "
                          "length; probe a patched model directory, or keep the length from probe.json")
    directory = location.directory
    raw, data = read_config_json(directory)
    if ExtensionRecord.of(data) is None:
        raise CtxextError(f"{directory}: config.json carries no ctxext patch to record the effective length in "
                          "(it is kept only with a patch; the probe's probe.json has it)")
    check_writable(directory)
    return directory, raw


def record_effective_length(model: str | Path, effective_length: int | None, *,
                            expected: bytes | None = None) -> Path:
    """Store ``effective_length`` (None: not known) in a patched directory's record; returns config.json's path.

    Only the record's ``effective_length`` changes, written atomically with the other patch writes'
    writer. ``expected``: config.json as it was when the measurement started; if it changed since,
    nothing is written (the length would belong to another config).
    """
    if effective_length is not None and (isinstance(effective_length, bool) or not isinstance(effective_length, int)
                                         or effective_length < 1):
        raise CtxextError(f"an effective length is a positive whole number of tokens, got {effective_length!r}")
    directory, raw = recordable_config(model)
    with exclusive(directory):
        raw, data = read_config_json(directory)
        if expected is not None and raw != expected:
            raise CtxextError(f"{directory / 'config.json'} changed while the model was probed; "
                              "effective length not recorded")
        record = ExtensionRecord.of(data)
        record.effective_length = effective_length
        write_patched_config(directory, None, {**data, "ctxext": record.to_dict()})
    return directory / "config.json"


def _patch_auto(model: str | Path, *, output, dry_run: bool, dtype: str, **options: Any) -> PatchResult:
    """``patch(..., "auto")``: the cached ``ctxext tune`` winner for this checkpoint and target length, else
    yarn (config-only patches are for stock engines); the choice goes into the record's ``auto`` field
    (a patched directory's config.json; a .gguf output keeps it only in the returned record)."""
    params = {k: v for k, v in options.items()
              if k not in ("factor", "target_length", "original_length", "replace", "rope_layer_types")}
    if params:
        raise CtxextError(f"method 'auto' chooses its parameters; give a method to set {', '.join(sorted(params))}")
    location = resolve_model_path(model)
    target = options.get("target_length")
    if target is None and location.gguf_file is None and options.get("factor") is not None:
        from .api import auto_target

        target = auto_target(_unpatched_config(location.directory)[0], options.get("factor"), None,
                             options.get("original_length"))
    method, chosen, note = resolve(model if target else None, location.directory, target or 0, config_only=True)
    result = patch(model, method, output=output, dry_run=dry_run, dtype=dtype, **options, **chosen)
    result.record.auto = note
    if not dry_run and result.path.is_dir() and (result.path / "config.json").is_file():
        with exclusive(result.path):
            _, data = read_config_json(result.path)
            write_patched_config(result.path, None, {**data, "ctxext": {**data["ctxext"], "auto": note}})
    return result


def _check_options(config, method: str, *, factor=None, target_length=None, original_length=None, replace=False,
                   rope_layer_types=None, **params) -> None:
    """``patch_gguf``'s keyword options checked on the config alone, as ``extend`` will plan them."""
    planned_extension(config, method, factor=factor, target_length=target_length, original_length=original_length,
                      replace=replace, rope_layer_types=rope_layer_types, params=params)


def _unpatched_config(directory: Path):
    """The directory's config with any ctxext patch taken off (in memory only), and that patch."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    return config, take_off_record(config)


def _patched_json(original: dict[str, Any], plan: ExtensionPlan) -> dict[str, Any]:
    patched = dict(original)
    patched.pop("ctxext", None)
    patched.pop("rope_scaling", None)  # transformers would let it override rope_parameters
    patched.update(json.loads(json.dumps(plan.fields)))
    rope = patched.get("rope_parameters") if "rope_parameters" in plan.fields else None
    flat = isinstance(rope, dict) and bool(rope) and not any(isinstance(v, dict) for v in rope.values())
    if flat and "rope_theta" in rope:
        # transformers 4.x (and vLLM/SGLang on it) read the base from the top level; 5.x prefers rope_parameters'
        patched["rope_theta"] = rope["rope_theta"]
    elif "rope_theta" in patched and "rope_theta" in plan.fields.get("rope_parameters", {}):
        patched["rope_theta"] = plan.fields["rope_parameters"]["rope_theta"]
    if flat and rope.get("rope_type") in LEGACY_ROPE_TYPES:
        # transformers 4.x / vLLM / SGLang read the scaling from rope_scaling; transformers 5 lets rope_scaling
        # replace rope_parameters wholesale, so it is an exact copy (plus the legacy "type" key)
        patched["rope_scaling"] = {**json.loads(json.dumps(rope)), "type": rope["rope_type"]}
    patched["ctxext"] = plan.record.to_dict()
    return patched
