"""``patch``: the one entry point that patches a checkpoint on disk, a model directory or a GGUF file.

A GGUF file is patched into a new .gguf whose tensors are the input's, byte for byte (``gguf/``), or loaded,
de-quantized, extended and saved as a new safetensors directory (any other output). Every check runs before
anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..auto import is_auto, resolve
from ..core.plan import plan_extension
from ..core.record import ExtensionRecord
from ..core.validate import check_dtype
from ..errors import CtxextError
from .atomic import exclusive, staged
from .config_json import read_config_json, write_patched_config
from .directory import patch_directory, unpatched_config
from .locations import ensure_new_output, resolve_model_path
from .result import PatchResult


def patch(
    model: str | Path,
    method: str,
    *,
    output: str | Path | None = None,
    dry_run: bool = False,
    dtype: str = "float32",
    engine_config: str | None = None,
    remote_code: bool = False,
    **options: Any,
) -> PatchResult:
    """Patch a model directory (``patch_directory``) or a GGUF file (``patch_gguf``) on disk.

    ``options`` are the lengths, ``replace``, ``rope_layer_types`` and the method's parameters,
    as for ``patch_directory``; ``engine_config`` and ``remote_code`` too (directories only). A GGUF file goes to
    ``output``: a new .gguf (metadata patched, tensors kept) or a new directory (de-quantized
    safetensors).
    """
    if not isinstance(remote_code, bool):
        raise CtxextError(f"remote_code must be true or false, got {remote_code!r}")
    if is_auto(method):
        if remote_code:
            raise CtxextError("--remote-code needs an attention-level method of its own, not auto")
        if engine_config is not None:
            raise CtxextError("--engine-config needs a method of its own (sglang: --method dca), not auto")
        return _patch_auto(model, output=output, dry_run=dry_run, dtype=dtype, **options)
    location = resolve_model_path(model)
    if location.gguf_file is None:
        if output is not None and _is_gguf_name(output):
            raise CtxextError(
                f"{output}: a model directory is patched into a directory; converting it to GGUF "
                "is llama.cpp's convert_hf_to_gguf.py, then patch that .gguf"
            )
        return patch_directory(
            location.directory,
            method,
            output=output,
            dry_run=dry_run,
            engine_config=engine_config,
            remote_code=remote_code,
            **options,
        )
    if remote_code:
        raise CtxextError(
            "--remote-code writes a module beside a directory's config.json: patch a model directory "
            "(a GGUF file: patch it into a directory first, then patch that with --remote-code)"
        )
    if engine_config is not None:
        raise CtxextError(
            "--engine-config writes an engine's section of config.json: it applies to model directories, not GGUF files"
        )
    if output is None:
        raise CtxextError(
            "a GGUF file is never patched in place: give an output, a new .gguf file (metadata "
            "patched, tensors kept) or a new directory (de-quantized safetensors)"
        )
    if dry_run and not _is_gguf_name(output):
        raise CtxextError(
            "a dry run of a GGUF file needs a .gguf output (it shows the metadata diff); "
            "the safetensors export cannot be dry-run"
        )
    return patch_gguf(model, output, method, dtype=dtype, dry_run=dry_run, **options)


def patch_gguf(
    gguf: str | Path, output: str | Path, method: str, *, dtype: str = "float32", dry_run: bool = False, **options: Any
) -> PatchResult:
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
    from ..model.extend import extend
    from ..model.loading import model_config

    location = _gguf_location(gguf)
    check_dtype(dtype)
    output = Path(output)
    ensure_new_output(output)
    config = model_config(location)
    _check_options(config, method, **options)  # bad options fail before the weights load
    model = _save_directory(location, output, dtype, lambda loaded: extend(loaded, method, **options))
    return PatchResult(output, ExtensionRecord.of(model.config), True)


def convert_gguf(gguf: str | Path, output: str | Path, *, dtype: str = "float32") -> Path:
    """``gguf`` as a new safetensors directory ``output``, de-quantized to ``dtype``, with no extension."""
    location = _gguf_location(gguf)
    check_dtype(dtype)
    output = Path(output)
    ensure_new_output(output)
    _save_directory(location, output, dtype, lambda loaded: None)
    return output


def _gguf_location(gguf: str | Path):
    location = resolve_model_path(gguf)
    if location.gguf_file is None:
        raise CtxextError(f"{gguf}: not a .gguf file")
    return location


def _save_directory(location, output: Path, dtype: str, change):
    """Load the GGUF checkpoint de-quantized to ``dtype``, apply ``change`` to the model, save it (with its tokenizer)
    as a new directory ``output``, all or nothing; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        location.directory, gguf_file=location.gguf_file, dtype=getattr(torch, dtype)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise CtxextError("this GGUF was loaded with packed weights (GGUF kernels installed); cannot save it")
        quantizer.remove_quantization_config(model)  # the weights are plain de-quantized tensors already
    change(model)
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    with staged(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return model


def _is_gguf_name(output: str | Path) -> bool:
    return Path(output).suffix.lower() == ".gguf"


def _patch_gguf_file(
    gguf: str | Path, output: str | Path, method: str, *, dtype: str, dry_run: bool, **options: Any
) -> PatchResult:
    from .gguf.writer import export_gguf

    location = _gguf_location(gguf)
    if dtype != "float32":
        raise CtxextError(
            f"dtype {dtype} is for the safetensors export; a .gguf output keeps the file's tensors as they are"
        )
    exported, diff = export_gguf(location.directory / location.gguf_file, output, method, dry_run=dry_run, **options)
    return PatchResult(
        Path(output), exported.plan.record, exported.stock_loadable, diff=diff, serve_command=exported.serve_command
    )


def _patch_auto(model: str | Path, *, output, dry_run: bool, dtype: str, **options: Any) -> PatchResult:
    """``patch(..., "auto")``: the cached ``ctxext tune`` winner for this checkpoint and target length, else
    yarn (config-only patches are for stock engines); the choice goes into the record's ``auto`` field
    (a patched directory's config.json; a .gguf output keeps it only in the returned record)."""
    params = {
        k: v
        for k, v in options.items()
        if k not in ("factor", "target_length", "original_length", "replace", "rope_layer_types")
    }
    location = resolve_model_path(model)
    target = options.get("target_length")
    if target is None and location.gguf_file is None and options.get("factor") is not None:
        from ..core.plan import auto_target

        target = auto_target(
            unpatched_config(location.directory)[0], options.get("factor"), None, options.get("original_length")
        )
    method, chosen, note = resolve(
        model if target else None, location.directory, target or 0, config_only=True, params=params
    )
    result = patch(model, method, output=output, dry_run=dry_run, dtype=dtype, **options, **chosen)
    result.record.auto = note
    if not dry_run and result.path.is_dir() and (result.path / "config.json").is_file():
        with exclusive(result.path):
            _, data = read_config_json(result.path)
            write_patched_config(result.path, None, {**data, "ctxext": {**data["ctxext"], "auto": note}})
    return result


def _check_options(
    config,
    method: str,
    *,
    factor=None,
    target_length=None,
    original_length=None,
    replace=False,
    rope_layer_types=None,
    **params,
) -> None:
    """``patch_gguf``'s keyword options checked on the config alone, as ``extend`` will plan them."""
    plan_extension(
        config,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        replace=replace,
        rope_layer_types=rope_layer_types,
        params=params,
    )
