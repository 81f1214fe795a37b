"""The one check of the model-config fields ctxext reads, run before anything is loaded or written.

Every entry point goes through it: a model directory's config.json as a plain dict before transformers
parses it (``patch``, ``info``, ``eval``, ``tune``, ``finetune``, ``from_pretrained``), a GGUF file's config
as transformers maps its metadata, a model object's config in ``extend()``, and a config.json ctxext is about
to write. A bad field gives one :class:`~ctxext.errors.CtxextError` line naming the file, the field and the
value; a config that passes has every length, count and rope base ctxext computes with in range.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from ..errors import CtxextError, one_line

POSITIVE_WHOLE = ("max_position_embeddings", "hidden_size", "num_attention_heads", "num_hidden_layers")  # when given
OPTIONAL_POSITIVE_WHOLE = ("num_key_value_heads", "head_dim", "original_max_position_embeddings")
FRACTIONS = ("partial_rotary_factor", "rotary_pct")  # of the head dimension that rotates: (0, 1]
ROPE_BASES = ("rope_theta", "rope_local_base_freq")
ROPE_SECTIONS = ("rope_parameters", "rope_scaling")
ROPE_POSITIVE_NUMBERS = ("rope_theta", "factor")
ROPE_POSITIVE_WHOLE = ("original_max_position_embeddings",)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(source: str, field: str, value: Any, want: str) -> None:
    raise CtxextError(f"{source}: {field} = {value!r}: {want}")


def _check_positive_number(source: str, field: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        _refuse(source, field, value, "must be a finite positive number")


def _check_positive_whole(source: str, field: str, value: Any) -> None:
    if not _is_whole(value) or value < 1:
        _refuse(source, field, value, "must be a positive whole number")


def _check_rope_section(source: str, field: str, section: Any) -> None:
    """A flat rope dict, or one rope dict per layer type (Gemma 3)."""
    if section is None:
        return
    if not isinstance(section, Mapping):
        _refuse(source, field, section, "must be a JSON object (or null)")
    nested = [key for key, value in section.items() if isinstance(value, Mapping)]
    parts = [(f"{field}.{key}", section[key]) for key in nested] if nested else [(field, section)]
    for name, part in parts:
        for key in ROPE_POSITIVE_NUMBERS:
            if part.get(key) is not None:
                _check_positive_number(source, f"{name}.{key}", part[key])
        for key in ROPE_POSITIVE_WHOLE:
            if part.get(key) is not None:
                _check_positive_whole(source, f"{name}.{key}", part[key])
        if part.get("partial_rotary_factor") is not None:
            _check_fraction(source, f"{name}.partial_rotary_factor", part["partial_rotary_factor"])


def _check_fraction(source: str, field: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= 1:
        _refuse(source, field, value, "must be a fraction in (0, 1]")


def _check_text_fields(fields: Mapping[str, Any], source: str, aliases: Mapping[str, str]) -> None:
    """``aliases``: the config class's ``attribute_map`` (GPT-2 keeps max_position_embeddings as n_positions)."""

    def get(name: str) -> tuple[str, Any]:
        key = aliases.get(name, name)
        return key, fields.get(key)

    key, value = get("max_position_embeddings")
    if value is None:
        raise CtxextError(f"{source}: no {key}: ctxext reads the model's native length from it")
    for name in POSITIVE_WHOLE + OPTIONAL_POSITIVE_WHOLE:
        key, value = get(name)
        if value is not None:
            _check_positive_whole(source, key, value)
    (heads_key, heads), (kv_key, kv_heads) = get("num_attention_heads"), get("num_key_value_heads")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        _refuse(source, kv_key, kv_heads, f"must divide {heads_key} ({heads})")
    hidden_key, hidden = get("hidden_size")
    if get("head_dim")[1] is None and heads is not None and hidden is not None and hidden % heads:
        _refuse(source, hidden_key, hidden, f"must be a multiple of {heads_key} ({heads})")
    for name in ROPE_BASES:
        if fields.get(name) is not None:
            _check_positive_number(source, name, fields[name])
    for name in FRACTIONS:
        if fields.get(name) is not None:
            _check_fraction(source, name, fields[name])
    for name in ROPE_SECTIONS:
        _check_rope_section(source, name, fields.get(name))


def check_config_fields(fields: Mapping[str, Any], source: str) -> None:
    """Refuse a config (a config.json object, or a config's ``to_dict()``) whose fields ctxext reads are
    missing or out of range; ``source`` names it in the message (the file, or "the model's config")."""
    model_type = fields.get("model_type")
    if "model_type" not in fields:
        raise CtxextError(f"{source}: no model_type: ctxext needs it to know the model's architecture")
    if not isinstance(model_type, str) or not model_type:
        _refuse(source, "model_type", model_type, "must name the model's architecture (llama, qwen2, ...)")
    aliases: Mapping[str, str] = {}
    if "auto_map" not in fields:  # a remote-code model names its own classes
        from transformers import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            _refuse(source, "model_type", model_type, "this transformers knows no such model type")
        aliases = getattr(CONFIG_MAPPING[model_type], "attribute_map", None) or {}
    text = fields.get("text_config")
    if isinstance(text, Mapping) and aliases.get("num_attention_heads", "num_attention_heads") not in fields:
        _check_text_fields(text, f"{source} (text_config)", {})
    else:
        _check_text_fields(fields, source, aliases)


def check_model_config(config: Any, source: str = "the model's config") -> None:
    """:func:`check_config_fields` on a transformers config object (its text decoder's, for multimodal ones)."""
    from .rope_setup import text_config

    text = text_config(config)
    fields = text.to_dict() if hasattr(text, "to_dict") else dict(vars(text))
    fields.setdefault("model_type", getattr(text, "model_type", None))
    check_config_fields(fields, source)


def check_buildable(fields: Mapping[str, Any], source: str, consequence: str) -> None:
    """Refuse a config whose fields pass :func:`check_config_fields` but from which stock transformers cannot
    build its config class (its own validators: head counts, token ids, ...); ``consequence`` ends the message.
    A remote-code model's classes are not at hand, so it passes."""
    if "auto_map" in fields:
        return
    from transformers import CONFIG_MAPPING

    try:
        CONFIG_MAPPING[fields["model_type"]].from_dict(copy.deepcopy(dict(fields)))  # it edits nested sections
    except Exception as exc:  # ValueError, TypeError, or a validation error wrapping the validator's ValueError
        raise CtxextError(f"{source}: {consequence}: {one_line(exc.__cause__ or exc)}") from None


def check_loadable(fields: Mapping[str, Any], source: str) -> None:
    """Refuse a config.json ctxext is about to write unless it passes the field checks and stock transformers
    builds its config class from it."""
    check_config_fields(fields, source)
    check_buildable(fields, source, "nothing written, the patched config would not load in transformers")
