"""The Python front door for loaded models: extend(), restore(), reapply() and from_pretrained().

``extend`` patches a loaded model in place: it rewrites the rope fields of its config,
rebuilds the rotary modules from that config and records the patch under
``config.ctxext``, keeping the replaced modules so that ``restore`` is exact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from . import auto
from .config import ExtensionRecord
from .errors import CtxextError
from .plan import apply_fields, plan_extension, resolve_lengths, take_off_record
from .rope_config import read_rope_setup, text_config
from .rotary_modules import find_rotary_modules, rebuild

logger = logging.getLogger(__name__)

_STATE = "_ctxext_state"


def extend(
    model: nn.Module,
    method: str,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    *,
    replace: bool = False,
    rope_layer_types: list[str] | None = None,
    **params: Any,
) -> nn.Module:
    """Extend ``model``'s context window in place with ``method`` and return it.

    Give ``factor`` (target / original length) or ``target_length``. ``original_length``
    defaults to the config's ``max_position_embeddings``. ``params`` are the method's
    parameters (see ``ctxext methods``). An already extended model, or one whose checkpoint
    has its own rope scaling, is refused unless ``replace=True``. For configs with per-layer-type
    rope parameters (Gemma 3) only ``full_attention`` layers are extended unless
    ``rope_layer_types`` says otherwise.

    ``method="auto"`` picks the method (see ``ctxext.auto``): the cached ``ctxext tune`` winner for the
    model's checkpoint and target length, else dca with temperature; the choice and its reason are kept
    in the record's ``auto`` field.
    """
    if auto.is_auto(method):
        return _extend_auto(model, factor, target_length, original_length, replace=replace,
                            rope_layer_types=rope_layer_types, params=params)
    config = text_config(model.config)
    read_rope_setup(config)
    rotary = find_rotary_modules(model)
    if any(module.config is not config for _, _, module in rotary):
        raise CtxextError("the rotary modules do not share the model's config; ctxext cannot patch this model")
    existing = ExtensionRecord.of(config)
    if existing is not None:
        if not replace:
            raise CtxextError(
                f"model is already extended with '{existing.method}'; call ctxext.restore(model) first or pass replace=True"
            )
        restore(model)
        rotary = find_rotary_modules(model)

    plan = plan_extension(
        config,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        rope_layer_types=rope_layer_types,
        replace_native_scaling=replace,
        params=params,
    )
    if plan.method.kind == "attention":
        runtime = plan.method.runtime(plan.method_config, plan.scalings[None])
        runtime.install(model)
        config.ctxext = plan.record.to_dict()
        model.__dict__[_STATE] = runtime
        return model
    apply_fields(config, plan.fields)
    swapped = []
    try:
        for parent, name, old in rotary:
            new = rebuild(old)
            if plan.method.prepare_module is not None:
                plan.method.prepare_module(new)
            setattr(parent, name, new)
            swapped.append((parent, name, old))
    except Exception:
        for parent, name, old in swapped:
            setattr(parent, name, old)
        apply_fields(config, plan.record.replaced)
        raise
    config.ctxext = plan.record.to_dict()
    model.__dict__[_STATE] = swapped  # the replaced modules, for an exact restore()
    return model


def auto_target(config: Any, factor: float | None, target_length: int | None, original_length: int | None) -> int:
    """The target length ``auto`` is chosen for (from ``factor`` when no target length is given), checked."""
    native = read_rope_setup(text_config(config)).native_length
    return resolve_lengths(native, factor, target_length, original_length)[2]


def _extend_auto(model, factor, target_length, original_length, *, replace, rope_layer_types, params):
    if params:
        raise CtxextError(f"method 'auto' chooses its parameters; give a method to set {', '.join(sorted(params))}")
    target = auto_target(model.config, factor, target_length, original_length)
    source = getattr(model.config, "_name_or_path", None) or None
    directory = source if source and (Path(source) / "config.json").is_file() else None
    own_temperature = any(float(getattr(rotary, "attention_scaling", 1.0)) != 1.0
                          for _, _, rotary in find_rotary_modules(model))
    method, chosen, note = auto.resolve(source if directory else None, directory, target,
                                        own_temperature=own_temperature)
    extend(model, method, factor=factor, target_length=target_length, original_length=original_length,
           replace=replace, rope_layer_types=rope_layer_types, **chosen)
    text_config(model.config).ctxext["auto"] = note
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``extend`` in place: the original rotary modules and config fields come back."""
    config = text_config(model.config)
    if ExtensionRecord.of(config) is None:
        raise CtxextError("model is not extended by ctxext; nothing to restore")
    take_off_record(config)
    swapped = model.__dict__.pop(_STATE, None)
    if hasattr(swapped, "uninstall"):
        swapped.uninstall(model)
    elif swapped is not None:
        for parent, name, old in swapped:
            setattr(parent, name, old)
    else:  # loaded from a patched checkpoint without ctxext: rebuild from the recorded originals
        for parent, name, module in find_rotary_modules(model):
            setattr(parent, name, rebuild(module))
    return model


def is_extended(model: nn.Module) -> bool:
    return ExtensionRecord.of(model.config) is not None


def reapply(model: nn.Module, record: ExtensionRecord) -> nn.Module:
    """Extend ``model`` exactly as a saved record says (replacing any extension it has); a measured
    effective length in the record is kept in the model's config."""
    extend(model, record.method, factor=record.factor, original_length=record.original_length,
           rope_layer_types=record.rope_layer_types, replace=True, **record.params)
    for key in ("effective_length", "auto"):
        if getattr(record, key) is not None:
            text_config(model.config).ctxext[key] = getattr(record, key)
    return model


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a causal LM (HF directory or GGUF file) with its ctxext patch re-applied.

    ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (``dtype``, ``device_map``, ...).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoint import resolve_model_path

    location = resolve_model_path(path)
    if location.gguf_file is not None:
        from .gguf_export import gguf_record

        model = AutoModelForCausalLM.from_pretrained(location.directory, gguf_file=location.gguf_file, **kwargs)
        record = gguf_record(location.directory / location.gguf_file)
        if record is not None:  # transformers reads the patched context length and base, not the scaling
            apply_fields(text_config(model.config), record.replaced)
            for parent, name, module in find_rotary_modules(model):
                setattr(parent, name, rebuild(module))
            reapply(model, record)
        return model
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(location.directory)
    saved_rope_parameters = text_config(config).rope_parameters
    record = take_off_record(config)
    if record is None:
        return AutoModelForCausalLM.from_pretrained(location.directory, config=config, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location.directory, config=config, **kwargs)
    reapply(model, record)
    if text_config(model.config).rope_parameters != saved_rope_parameters:
        logger.warning(
            "config.json's rope parameters differ from what this ctxext computes for %s; using ctxext's",
            record.method,
        )
    return model
