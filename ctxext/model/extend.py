"""The Python front door for loaded models: extend(), restore() and reapply(), all in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .. import auto
from ..core.config_check import check_model_config
from ..core.plan import apply_fields, auto_target, plan_fresh, take_off_record
from ..core.record import ExtensionRecord
from ..core.rope_setup import read_rope_setup, text_config
from ..errors import CtxextError
from .rotary import find_rotary_modules, rebuild

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
    _check_model(model, "extend")
    if auto.is_auto(method):
        return _extend_auto(
            model,
            factor,
            target_length,
            original_length,
            replace=replace,
            rope_layer_types=rope_layer_types,
            params=params,
        )
    check_model_config(model.config)
    config = text_config(model.config)
    read_rope_setup(config)
    rotary = find_rotary_modules(model)
    if any(module.config is not config for _, _, module in rotary):
        raise CtxextError("the rotary modules do not share the model's config; ctxext cannot patch this model")
    existing = ExtensionRecord.of(config)
    if existing is not None:
        if not replace:
            raise CtxextError(
                f"model is already extended with '{existing.method}'; call ctxext.restore(model) first "
                "or pass replace=True"
            )
        restore(model)
        rotary = find_rotary_modules(model)

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


def _check_model(model: Any, caller: str) -> None:
    """A loaded transformers model: a torch module with a ``config`` (a wrapper such as DataParallel is not)."""
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        return
    unwrap = "; pass the model it wraps (its .module)" if isinstance(getattr(model, "module", None), nn.Module) else ""
    raise CtxextError(
        f"ctxext.{caller} needs a loaded transformers model (a torch module with a .config), "
        f"got {type(model).__name__}{unwrap}"
    )


def _extend_auto(model, factor, target_length, original_length, *, replace, rope_layer_types, params):
    target = auto_target(model.config, factor, target_length, original_length)
    source = getattr(model.config, "_name_or_path", None) or None
    directory = source if source and (Path(source) / "config.json").is_file() else None
    own_temperature = any(
        float(getattr(rotary, "attention_scaling", 1.0)) != 1.0 for _, _, rotary in find_rotary_modules(model)
    )
    method, chosen, note = auto.resolve(
        source if directory else None, directory, target, own_temperature=own_temperature, params=params
    )
    extend(
        model,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        replace=replace,
        rope_layer_types=rope_layer_types,
        **chosen,
    )
    text_config(model.config).ctxext["auto"] = note
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``extend`` in place: the original rotary modules and config fields come back."""
    _check_model(model, "restore")
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
    _check_model(model, "is_extended")
    return ExtensionRecord.of(model.config) is not None


def reapply(model: nn.Module, record: ExtensionRecord) -> nn.Module:
    """Extend ``model`` exactly as a saved record says (replacing any extension it has); a measured
    effective length in the record is kept in the model's config."""
    extend(
        model,
        record.method,
        factor=record.factor,
        original_length=record.original_length,
        rope_layer_types=record.rope_layer_types,
        replace=True,
        **record.params,
    )
    for key in ("effective_length", "auto"):
        if getattr(record, key) is not None:
            text_config(model.config).ctxext[key] = getattr(record, key)
    return model
