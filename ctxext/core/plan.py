"""Turning (config, method, lengths, parameters) into the config fields a patch writes.

Shared by ``extend()`` (which also rebuilds the rotary modules of a loaded model) and by
``ctxext patch`` (which only rewrites config.json), so both produce the same config.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from ..errors import CtxextError
from ..version import __version__
from .params import MethodConfig
from .record import ExtensionRecord
from .registry import AttentionMethod, Method, Scaling, get_method
from .rope_setup import read_rope_setup, text_config
from .validate import MAX_TARGET_LENGTH


@dataclass
class ExtensionPlan:
    method: Method
    method_config: MethodConfig
    scalings: dict[str | None, Scaling]
    fields: dict[str, Any]  # config attribute -> new value
    record: ExtensionRecord


def resolve_lengths(
    native_length: int,
    factor: float | None,
    target_length: int | None,
    original_length: int | None,
    allow_native: bool = False,
) -> tuple[float, int, int]:
    """(factor, original length, target length) from whichever the caller gave.

    ``allow_native`` accepts factor 1 (methods that also act inside the native length).
    """
    original = native_length if original_length is None else original_length
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise CtxextError(f"original length must be a positive integer, got {original!r}")
    if (factor is None) == (target_length is None):
        raise CtxextError("give exactly one of factor or target length")
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise CtxextError(f"factor must be a finite number, got {factor!r}")
        if factor < 1 or (factor == 1 and not allow_native):
            bound = "at least 1" if allow_native else "greater than 1"
            smaller = "less" if allow_native else "1 or less"
            raise CtxextError(f"factor must be {bound} (got {factor}); {smaller} would not extend anything")
        target = int(round(original * factor))
        if target > MAX_TARGET_LENGTH:
            raise CtxextError(
                f"factor {factor} gives a target length of {target} tokens, above ctxext's limit of "
                f"{MAX_TARGET_LENGTH} (16m)"
            )
        return float(factor), original, target
    if isinstance(target_length, bool) or not isinstance(target_length, int):
        raise CtxextError(f"target length must be an integer, got {target_length!r}")
    if target_length < original or (target_length == original and not allow_native):
        raise CtxextError(f"target length {target_length} must be above the original length {original}")
    if target_length > MAX_TARGET_LENGTH:
        raise CtxextError(f"target length {target_length} is above ctxext's limit of {MAX_TARGET_LENGTH} tokens (16m)")
    return target_length / original, original, target_length


def plan_fresh(
    config: Any,
    method: str,
    *,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    rope_layer_types: list[str] | None = None,
    replace_native_scaling: bool = False,
    params: dict[str, Any] | None = None,
) -> ExtensionPlan:
    """The plan for a config that carries no ctxext patch (``plan_extension`` takes one off first): the patched
    config fields, the scalings per layer type and the record."""
    rope_method = get_method(method)
    method_config = rope_method.config_class.from_params(rope_method.name, dict(params or {}))
    config = text_config(config)
    setup = read_rope_setup(config)
    if getattr(config, "ctxext", None):
        raise CtxextError("model is already extended by ctxext; restore it first or ask to replace the extension")
    if isinstance(rope_method, AttentionMethod):
        return _plan_attention(config, setup, rope_method, method_config, factor, target_length, original_length)
    layer_types = setup.select_layer_types(rope_layer_types)
    if setup.per_layer_type and not rope_method.supports_per_layer_type:
        raise CtxextError(
            f"method '{rope_method.name}' does not support per-layer-type rope configs ({setup.model_type})"
        )
    factor, original, target = resolve_lengths(setup.native_length, factor, target_length, original_length)

    for layer_type in layer_types:
        native_type = setup.parameters[layer_type].get("rope_type", "default")
        if native_type != "default" and not replace_native_scaling:
            raise CtxextError(
                f"model already uses '{native_type}' rope scaling; pass replace=True (--replace) to replace it"
            )

    new_rope_parameters = copy.deepcopy(config.rope_parameters)
    scalings = {}
    for layer_type in layer_types:
        scaling = Scaling(factor, original, target, setup.rotary_dim(layer_type))
        built = rope_method.build(setup.parameters[layer_type], scaling, method_config)
        if layer_type is None:
            new_rope_parameters = built
        else:
            new_rope_parameters[layer_type] = built
        scalings[layer_type] = scaling

    fields = {
        "rope_parameters": new_rope_parameters,
        "max_position_embeddings": original if rope_method.dynamic else target,
    }
    if hasattr(config, "original_max_position_embeddings"):
        # Phi-3 style configs: transformers prefers this field over the rope parameters' own.
        fields["original_max_position_embeddings"] = original
    _check_transformers_accepts(config, fields, setup.model_type)
    replaced = {name: copy.deepcopy(getattr(config, name)) for name in fields}
    record = _record(rope_method, method_config, scalings[layer_types[0]], layer_types, replaced)
    return ExtensionPlan(rope_method, method_config, scalings, fields, record)


def plan_extension(
    config: Any,
    method: str,
    *,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    replace: bool = False,
    rope_layer_types: list[str] | None = None,
    params: dict | None = None,
    restore_first: bool = False,
) -> ExtensionPlan:
    """The plan ``extend(model, method, ...)`` makes on a model with ``config``, computed from the config alone.

    A config that carries a ctxext patch (a patched checkpoint, as ``ctxext.from_pretrained`` loads it) is refused
    as ``extend`` refuses it, unless ``replace``; ``restore_first``: the caller restores the model before extending
    it (``ctxext eval``), so the patch is taken off in any case. ``config`` itself is left as it is.
    """
    config = copy.deepcopy(config)
    existing = take_off_record(config)
    if existing is not None and not (replace or restore_first):
        raise CtxextError(
            f"model is already extended with '{existing.method}'; pass replace=True (--replace) "
            "to replace that extension"
        )
    return plan_fresh(
        config,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        rope_layer_types=rope_layer_types,
        replace_native_scaling=replace,
        params=params,
    )


def _record(method, method_config, scaling: Scaling, layer_types, replaced: dict[str, Any]) -> ExtensionRecord:
    return ExtensionRecord(
        method=method.name,
        factor=scaling.factor,
        original_length=scaling.original_length,
        target_length=scaling.target_length,
        params=method_config.to_dict(),
        rope_layer_types=None if layer_types == [None] else list(layer_types),
        replaced=replaced,
        version=__version__,
    )


def _plan_attention(config, setup, method, method_config, factor, target_length, original_length) -> ExtensionPlan:
    """Attention-level methods keep the config's rope; only the record is written."""
    if setup.per_layer_type:
        raise CtxextError(f"attention-level methods do not support per-layer-type rope configs ({setup.model_type})")
    if getattr(config, "sliding_window", None) is not None or "sliding_attention" in (
        getattr(config, "layer_types", None) or []
    ):
        raise CtxextError(
            f"{setup.model_type} uses sliding-window attention; attention-level methods need full attention"
        )
    rope_type = setup.parameters[None].get("rope_type", "default")
    if rope_type == "dynamic" or rope_type.startswith("ctxext_"):
        raise CtxextError(f"attention-level methods need a static rope; this model uses '{rope_type}'")
    factor, original, target = resolve_lengths(setup.native_length, factor, target_length, original_length, True)
    scaling = Scaling(factor, original, target, setup.rotary_dim(None))
    method.runtime(method_config, scaling)  # validates the parameters against the lengths
    return ExtensionPlan(
        method, method_config, {None: scaling}, {}, _record(method, method_config, scaling, [None], {})
    )


def _check_transformers_accepts(config: Any, fields: dict[str, Any], model_type: str) -> None:
    """Run the model config's own rope validation on the patched fields (Phi-3 takes only longrope)."""
    trial = copy.deepcopy(config)
    apply_fields(trial, fields)
    try:
        trial.validate_rope()
    except (ValueError, KeyError, TypeError) as exc:
        cause = getattr(exc, "__cause__", None) or exc
        message = str(cause).strip().splitlines()[-1]
        raise CtxextError(f"transformers' {model_type} config refuses this patch: {message}") from None


def apply_fields(config: Any, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        setattr(config, name, copy.deepcopy(value))


def take_off_record(config: Any) -> ExtensionRecord | None:
    """Put the fields a recorded patch replaced back into ``config`` and drop the record."""
    config = text_config(config)
    saved = getattr(config, "ctxext", None)
    if not saved:
        return None
    record = ExtensionRecord.from_dict(saved)
    # a field recorded as None that the config class does not define was absent before the patch (a section
    # the patch added, as in config.json): it goes, rather than becoming None
    added = [name for name, value in record.replaced.items() if value is None and not hasattr(type(config), name)]
    apply_fields(config, {k: v for k, v in record.replaced.items() if k not in added})
    for name in added:
        if name in vars(config):
            delattr(config, name)
    del config.ctxext
    return record


def auto_target(config: Any, factor: float | None, target_length: int | None, original_length: int | None) -> int:
    """The target length ``auto`` is chosen for (from ``factor`` when no target length is given), checked."""
    native = read_rope_setup(text_config(config)).native_length
    return resolve_lengths(native, factor, target_length, original_length)[2]
