"""Patching a model directory by rewriting its config.json only, and undoing it.

Stock transformers reloads a rope method from the result; attention-level methods get just the record that
``ctxext.from_pretrained`` re-applies. Writes are atomic; the original config.json is kept byte for byte beside
the patched one so that ``unpatch_directory`` gives it back. ``record_effective_length`` adds a measured
effective length (``ctxext probe --record``) to a patched directory's record.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from ..core.config_check import check_loadable
from ..core.plan import ExtensionPlan, plan_fresh, take_off_record
from ..core.record import ExtensionRecord
from ..errors import CtxextError
from ..serving import DUAL_CHUNK, serve_commands, sglang_dual_chunk_config, transformers4_fields
from .atomic import atomic_write, exclusive
from .config_json import (
    BACKUP,
    read_backup,
    read_config_json,
    recorded_original,
    sha256,
    unpatch_config,
    write_patched_config,
)
from .locations import check_writable, copy_model_dir, resolve_model_path
from .remote_code import MODULE, add_auto_map, architecture_of, is_ours, module_text
from .result import PatchResult

ENGINE_CONFIGS = (None, "sglang")  # engine sections patch_directory can write into config.json


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
    remote_code: bool = False,
    **params: Any,
) -> PatchResult:
    """Extend a model directory by rewriting its config.json (in place, or in a copy at ``output``).

    An already patched directory is refused unless ``replace=True``, which patches the
    original config again. ``dry_run`` writes nothing and returns the config.json diff.
    ``engine_config="sglang"`` (with ``dca`` on a Qwen2/Qwen3 model) also writes SGLang's
    ``dual_chunk_attention_config``, so that SGLang serves the patch with its own DCA.
    ``remote_code=True`` (attention-level methods) also writes the remote-code module that lets stock
    ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` load the patch (``remote_code.py``).
    """
    if engine_config not in ENGINE_CONFIGS:
        raise CtxextError(f"unknown engine config {engine_config!r}; choose from: {', '.join(ENGINE_CONFIGS[1:])}")
    location = resolve_model_path(directory)
    if location.gguf_file is not None:
        raise CtxextError(f"{directory}: a GGUF file, not a model directory; use patch_gguf")
    directory = location.directory
    raw, data = read_config_json(directory)
    config, saved = unpatched_config(directory)
    if saved and not replace:
        raise CtxextError(f"{directory} is already patched with '{saved.method}'; use --replace or 'ctxext unpatch'")
    if not saved and (directory / BACKUP).exists():
        raise CtxextError(
            f"{directory / BACKUP} exists but config.json carries no ctxext patch: ctxext did not write that "
            "backup (or config.json was replaced since); move it away first; nothing written"
        )
    plan = plan_fresh(
        config,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        rope_layer_types=rope_layer_types,
        replace_native_scaling=replace,
        params=params,
    )
    original_raw, original = raw, data
    if saved and (directory / BACKUP).exists():
        original_raw, original = read_backup(directory, saved)
    elif saved:  # the kept original is gone: rebuild it from the record, and keep no patched config as one
        original_raw, original = None, recorded_original(data, saved)
    if remote_code and plan.method.stock_loadable:
        raise CtxextError(
            f"'{plan.method.name}' loads in stock transformers from config.json alone; "
            "--remote-code is for attention-level methods"
        )
    patched = _patched_json(original, plan)
    plan.record.original_sha256 = sha256(original_raw) if original_raw is not None else None
    module = None
    if remote_code:
        architecture = architecture_of(original)
        add_auto_map(patched, original, plan.record.replaced, architecture)
        module = module_text(architecture, plan.method.name)
    plan.record.added = sorted(set(patched) - set(original) - {"ctxext"}) or None
    patched["ctxext"] = plan.record.to_dict()
    if engine_config == "sglang":  # the section is built from the written record, then recorded in it
        section = sglang_dual_chunk_config(patched)
        plan.record.replaced[DUAL_CHUNK] = copy.deepcopy(original.get(DUAL_CHUNK))
        patched[DUAL_CHUNK] = section
        patched["ctxext"] = plan.record.to_dict()
    check_loadable(patched, f"{directory / 'config.json'} (as patched)")
    result = PatchResult(directory, plan.record, plan.method.stock_loadable)
    result.serve_commands = serve_commands(patched, directory if output is None else output)
    if dry_run:
        before = json.dumps(data, indent=2, sort_keys=True).splitlines()
        after = json.dumps(patched, indent=2, sort_keys=True).splitlines()
        result.diff = "\n".join(
            difflib.unified_diff(before, after, "config.json", "config.json (patched)", lineterm="")
        )
        return result
    if output is not None:
        output = Path(output)
        copy_model_dir(directory, output)
        result.path = output
        if module is not None:
            atomic_write(output / MODULE, module)
        write_patched_config(output, original_raw, patched)
        return result
    check_writable(directory)
    with exclusive(directory):
        if read_config_json(directory)[0] != raw:
            raise CtxextError(f"{directory / 'config.json'} changed while it was being patched; nothing written")
        if module is not None:  # before config.json points at it
            atomic_write(directory / MODULE, module)
        write_patched_config(directory, original_raw, patched)
    return result


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
        how = unpatch_config(directory, record)
        if is_ours(directory / MODULE):  # after config.json no longer points at it
            (directory / MODULE).unlink()
            how += f"; removed {MODULE}"
        return how


def recordable_config(model: str | Path) -> tuple[Path, bytes]:
    """(directory, config.json bytes) of a model whose patch record can take an effective length.

    Only a ctxext-patched model directory has one: a directory without a record is refused (an
    effective length belongs to the patch it was measured with, and ``unpatch`` takes it away with
    the patch), and so is a GGUF file (never rewritten in place). Nothing is written.
    """
    location = resolve_model_path(model)
    if location.gguf_file is not None:
        raise CtxextError(
            f"{model}: a GGUF file is never rewritten in place, so it cannot record an effective "
            "length; probe a patched model directory, or keep the length from probe.json"
        )
    directory = location.directory
    raw, data = read_config_json(directory)
    if ExtensionRecord.of(data) is None:
        raise CtxextError(
            f"{directory}: config.json carries no ctxext patch to record the effective length in "
            "(it is kept only with a patch; the probe's probe.json has it)"
        )
    check_writable(directory)
    return directory, raw


def record_effective_length(model: str | Path, effective_length: int | None, *, expected: bytes | None = None) -> Path:
    """Store ``effective_length`` (None: not known) in a patched directory's record; returns config.json's path.

    Only the record's ``effective_length`` changes, written atomically with the other patch writes'
    writer. ``expected``: config.json as it was when the measurement started; if it changed since,
    nothing is written (the length would belong to another config).
    """
    if effective_length is not None and (
        isinstance(effective_length, bool) or not isinstance(effective_length, int) or effective_length < 1
    ):
        raise CtxextError(f"an effective length is a positive whole number of tokens, got {effective_length!r}")
    directory, raw = recordable_config(model)
    with exclusive(directory):
        raw, data = read_config_json(directory)
        if expected is not None and raw != expected:
            raise CtxextError(
                f"{directory / 'config.json'} changed while the model was probed; effective length not recorded"
            )
        record = ExtensionRecord.of(data)
        record.effective_length = effective_length
        write_patched_config(directory, None, {**data, "ctxext": record.to_dict()})
    return directory / "config.json"


def unpatched_config(directory: Path):
    """The directory's config with any ctxext patch taken off (in memory only), and that patch."""
    from ..model.loading import model_config

    config = model_config(resolve_model_path(directory))
    return config, take_off_record(config)


def _patched_json(original: dict[str, Any], plan: ExtensionPlan) -> dict[str, Any]:
    patched = dict(original)
    patched.pop("ctxext", None)
    patched.pop("rope_scaling", None)  # transformers would let it override rope_parameters
    patched.update(json.loads(json.dumps(plan.fields)))
    rope = patched.get("rope_parameters") if "rope_parameters" in plan.fields else None
    flat = isinstance(rope, dict) and bool(rope) and not any(isinstance(v, dict) for v in rope.values())
    if flat:  # transformers 4.x (and vLLM/SGLang on it) read the rope from top-level fields
        patched.update(transformers4_fields(patched.get("model_type"), rope))
    elif "rope_theta" in patched and "rope_theta" in plan.fields.get("rope_parameters", {}):
        patched["rope_theta"] = plan.fields["rope_parameters"]["rope_theta"]
    patched["ctxext"] = plan.record.to_dict()
    return patched
