"""What each inference engine makes of a (patched) config.json, and the commands that serve it.

Pure functions of the config.json dict; nothing is loaded or installed. The rules are the
engines' own, read from their code:

- **transformers 5.x** reads ``rope_parameters``; a ``rope_scaling`` key in config.json
  replaces it wholesale (``convert_rope_params_to_dict``: ``rope_scaling or rope_parameters``).
  It does not cap the prompt length. Rope types it does not know (``ctxext_*``) need ctxext.
- **transformers 4.x** reads ``rope_scaling`` and the top-level ``rope_theta`` only (GPT-NeoX:
  ``rotary_emb_base``): a config written only for 5.x loads there without its scaling, silently. Its
  ``longrope`` takes the native length from the top-level ``original_max_position_embeddings`` only
  (without it, ``max_position_embeddings``: the short factors and another attention factor), and its
  Phi-3 config accepts a ``rope_scaling`` of exactly ``type``, ``short_factor`` and ``long_factor``.
  ``transformers4_fields`` is what ctxext writes for it; ``tests/test_transformers4.py`` checks both
  against the real 4.x.
- **vLLM** (``_get_and_verify_max_len``) takes the rope from ``rope_scaling`` / ``rope_parameters``
  (the same dict transformers ends with), knows ``default, linear, dynamic, yarn, llama3,
  longrope`` (others raise), and derives the longest sequence it accepts: for ``longrope`` and
  ``llama3`` ``max_position_embeddings`` (``longrope`` with a top-level
  ``original_max_position_embeddings``, as ctxext writes it: that native length unless
  ``--max-model-len`` asks for more); for the other types ``max_position_embeddings x factor``, for ``yarn``
  ``original_max_position_embeddings x factor`` (Gemma 3: no factor). Its ``dynamic``
  is a fixed NTK base for that derived length, not a length-dependent one. Attention-level
  methods are not in config.json's rope: it serves those models unpatched.
- **SGLang** (``get_context_length``) follows the same rope rule as vLLM; its own DCA is
  ``dual_chunk_attention_config`` (``chunk_size`` c, ``local_size`` w, chunks of c - w tokens,
  as ctxext's ``dca``) for Qwen2/Qwen3 only: ``patch_directory(..., engine_config="sglang")``
  writes it (:func:`sglang_dual_chunk_config`).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CtxextError

ENGINES = ("transformers-5", "transformers-4", "vllm", "sglang")
# rope types transformers 4.x / vLLM / SGLang read from rope_scaling
LEGACY_ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope")
VLLM_ROPE_TYPES = ("default",) + LEGACY_ROPE_TYPES
DEFAULT_THETA = 10000.0
DCA_MODEL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
DUAL_CHUNK = "dual_chunk_attention_config"  # SGLang's DCA section of config.json
# transformers 4.x: the top-level key each model type takes the rotary base from (the others: rope_theta)
BASE_KEY_4X = {"gpt_neox": "rotary_emb_base", "gpt_neox_japanese": "rotary_emb_base"}
BASE_KEYS = ("rope_theta", *sorted(set(BASE_KEY_4X.values())))  # top-level copies of the base ctxext writes
# transformers 4.x configs that accept only Phi-3's longrope rope_scaling: type, short_factor, long_factor
THREE_FIELD_LONGROPE = ("phi3", "phi4_multimodal")


@dataclass(frozen=True)
class EngineView:
    """One engine's reading of a config.json."""

    engine: str
    loads: bool  # the engine loads this config at all
    rope_type: str | None  # the rope type it builds (None when it does not load)
    factor: float | None  # the scale factor it uses (None: none)
    rope_theta: float | None
    max_length: int | None  # longest sequence it accepts without flags (None: not capped)
    extended: bool  # it reproduces the ctxext extension as transformers 5 + ctxext do
    note: str = ""  # one line: what goes wrong, or what to know
    longest_by_flag: int | None = None  # longest a length flag may ask without an override (None: max_length)


def transformers4_fields(model_type: str | None, rope: dict[str, Any]) -> dict[str, Any]:
    """The top-level config.json fields from which transformers 4.x reads ``rope``, a flat rope section of
    transformers 5 (``rope_parameters``): the base (``rope_theta``, and ``rotary_emb_base`` where 4.x reads
    that), ``rope_scaling`` for the rope types 4.x knows (a copy, since 5.x lets it replace ``rope_parameters``)
    and, for ``longrope``, the native length, which 4.x reads only at the top level."""
    fields = {}
    if "rope_theta" in rope:
        fields["rope_theta"] = rope["rope_theta"]
        if model_type in BASE_KEY_4X:
            fields[BASE_KEY_4X[model_type]] = rope["rope_theta"]
    rope_type = rope.get("rope_type")
    if rope_type in LEGACY_ROPE_TYPES:
        fields["rope_scaling"] = {**json.loads(json.dumps(rope)), "type": rope_type}
    if rope_type == "longrope":
        fields["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
        if model_type in THREE_FIELD_LONGROPE and rope.get("attention_factor") is None:
            fields["rope_scaling"] = {k: fields["rope_scaling"][k] for k in ("type", "short_factor", "long_factor")}
    return fields


def _flat(params: Any) -> dict[str, Any] | None:
    """A flat rope dict; for a per-layer-type one, its ``full_attention`` entry (or None)."""
    if not isinstance(params, dict) or not params:
        return None
    if all(isinstance(v, dict) for v in params.values()):
        return params.get("full_attention") or next(iter(params.values()))
    return params


def _rope_type(params: dict[str, Any] | None) -> str:
    if not params:
        return "default"
    return params.get("rope_type", params.get("type", "default"))


def _factor(params: dict[str, Any] | None) -> float | None:
    value = (params or {}).get("factor")
    return None if value is None else float(value)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9)


def _method_kind(record: dict[str, Any] | None) -> str:
    """'attention', 'rope' or 'none' for a config's ctxext record."""
    if not record:
        return "none"
    from . import methods  # noqa: F401  (registers the methods)
    from .core.registry import AttentionMethod, get_method

    try:
        method = get_method(record["method"])
    except Exception:  # an unknown method name: judge by the rope alone
        return "rope"
    return "attention" if isinstance(method, AttentionMethod) else "rope"


def engine_view(config_json: dict[str, Any]) -> dict[str, EngineView]:
    """What transformers 5.x, transformers 4.x, vLLM and SGLang make of ``config_json``."""
    record = config_json.get("ctxext") or None
    kind = _method_kind(record)
    method = record["method"] if record else None
    views = {"transformers-5": _transformers5(config_json, kind, method)}
    views["transformers-4"] = _transformers4(config_json, views["transformers-5"], kind, method)
    views["vllm"] = _served(config_json, views["transformers-5"], kind, method, "vllm")
    views["sglang"] = _served(config_json, views["transformers-5"], kind, method, "sglang")
    return views


def _attention_note(method: str) -> str:
    return f"attention-level method '{method}' is not in config.json's rope: loaded unpatched (native rope)"


def _transformers5(config: dict[str, Any], kind: str, method: str | None) -> EngineView:
    params = _flat(config.get("rope_scaling") or config.get("rope_parameters"))
    rope_type = _rope_type(params)
    theta = float((params or {}).get("rope_theta", config.get("rope_theta", DEFAULT_THETA)))
    if rope_type.startswith("ctxext_"):
        return EngineView(
            "transformers-5",
            False,
            None,
            None,
            theta,
            None,
            False,
            f"stock transformers has no rope type '{rope_type}'",
        )
    if kind == "attention":
        return EngineView(
            "transformers-5", True, rope_type, _factor(params), theta, None, False, _attention_note(method)
        )
    return EngineView("transformers-5", True, rope_type, _factor(params), theta, None, kind == "rope")


def _transformers4(config: dict[str, Any], t5: EngineView, kind: str, method: str | None) -> EngineView:
    params = _flat(config.get("rope_scaling"))
    rope_type = _rope_type(params)
    model_type = config.get("model_type")
    theta = float(config.get(BASE_KEY_4X.get(model_type, "rope_theta"), DEFAULT_THETA))
    if rope_type.startswith("ctxext_"):
        return EngineView(
            "transformers-4", False, None, None, theta, None, False, f"transformers 4.x has no rope type '{rope_type}'"
        )
    if model_type in THREE_FIELD_LONGROPE and params and set(params) != {"type", "short_factor", "long_factor"}:
        note = "transformers 4.x's Phi-3 config refuses a rope_scaling other than type, short_factor and long_factor"
        return EngineView("transformers-4", False, None, None, theta, None, False, note)
    factor = _factor(params) if rope_type != "default" else None
    if model_type in THREE_FIELD_LONGROPE and rope_type == "longrope":
        factor = t5.factor  # 4.x's Phi-3 takes it from max_position_embeddings / original_max_position_embeddings
    native = config.get("original_max_position_embeddings")  # 4.x's longrope reads it only here
    same = (
        t5.loads
        and rope_type == t5.rope_type
        and _same(factor, t5.factor if rope_type != "default" else None)
        and _same(theta, t5.rope_theta)
        and (rope_type != "longrope" or native == params.get("original_max_position_embeddings", native))
    )
    if kind == "attention":
        note = _attention_note(method)
    elif kind == "rope" and not same:
        wanted = t5.rope_type if t5.loads else "ctxext's own rope"
        note = (
            f"transformers 4.x reads rope_scaling/rope_theta only: it loads rope '{rope_type}' "
            f"(theta {theta:g}) instead of '{wanted}', silently"
        )
    else:
        note = ""
    return EngineView("transformers-4", True, rope_type, factor, theta, None, kind == "rope" and same, note)


def _served(config: dict[str, Any], t5: EngineView, kind: str, method: str | None, engine: str) -> EngineView:
    name = "vLLM" if engine == "vllm" else "SGLang"
    params = _flat(config.get("rope_scaling") or config.get("rope_parameters"))
    rope_type = _rope_type(params)
    theta = float((params or {}).get("rope_theta", config.get("rope_theta", DEFAULT_THETA)))
    if rope_type not in VLLM_ROPE_TYPES:
        return EngineView(
            engine,
            False,
            None,
            None,
            theta,
            None,
            False,
            f"{name} has no rope type '{rope_type}' and refuses to load it",
        )
    length = float(config.get("max_position_embeddings") or 2048)
    factor = _factor(params)
    if rope_type not in ("longrope", "llama3") and "gemma3" not in str(config.get("model_type", "")):
        if rope_type == "yarn" and params.get("original_max_position_embeddings"):
            length = float(params["original_max_position_embeddings"])
        length *= factor if factor is not None else 1.0
    max_length = int(length)
    note = ""
    extended = (
        kind == "rope"
        and t5.loads
        and rope_type == t5.rope_type
        and _same(theta, t5.rope_theta)
        and _same(factor, t5.factor)
    )
    if kind == "attention" and engine == "sglang" and _serves_own_dca(config):
        extended = True
        note = (
            "served by SGLang's own Dual Chunk Attention (dual_chunk_attention_config), the Qwen2.5-1M "
            "implementation: its rotary table places inter-chunk queries at (i mod s) + c, ctxext's at c"
        )
    elif kind == "attention":
        note = _attention_note(method)
        if engine == "sglang" and method == "dca" and config.get("model_type") in DCA_MODEL_TYPES:
            note += (
                "; SGLang's own DCA for Qwen2/Qwen3 takes a dual_chunk_attention_config "
                "(chunk_size, local_size): patch with --engine-config sglang"
            )
    elif rope_type == "dynamic":
        extended = False
        note = (
            f"{name}'s 'dynamic' is a fixed NTK base for max_position_embeddings x factor = {max_length} "
            "tokens, not the length-dependent one; use --method ntk (or yarn) for it"
        )
    longest_by_flag = None
    native = config.get("original_max_position_embeddings")
    if engine == "vllm" and rope_type == "longrope" and native:
        # vLLM's default max_model_len for longrope is the top-level native length; --max-model-len may ask more
        max_length, longest_by_flag = int(native), max_length
    return EngineView(engine, True, rope_type, factor, theta, max_length, extended, note, longest_by_flag)


def sglang_dual_chunk_config(config_json: dict[str, Any]) -> dict[str, int]:
    """SGLang's ``dual_chunk_attention_config`` for a config.json patched with ``dca``, or a CtxextError why not.

    SGLang's DCA cuts positions into chunks of ``chunk_size - local_size`` tokens like ctxext's
    (c, w); it has neither DCA's temperature nor log-n scaling, so those are refused.
    """
    from .methods.dca import chunk_sizes

    record = config_json.get("ctxext") or {}
    if record.get("method") != "dca":
        raise CtxextError("--engine-config sglang writes SGLang's Dual Chunk Attention config: it needs --method dca")
    model_type = config_json.get("model_type")
    if model_type not in DCA_MODEL_TYPES:
        raise CtxextError(
            f"SGLang serves Dual Chunk Attention for {', '.join(DCA_MODEL_TYPES)} models only, not {model_type!r}"
        )
    params = record.get("params") or {}
    extra = [name for name in ("temperature", "log_scaling") if params.get(name)]
    if extra:
        raise CtxextError(
            f"SGLang's Dual Chunk Attention has no {' or '.join(extra)}: leave it off with --engine-config sglang"
        )
    chunk, local = chunk_sizes(params.get("chunk_size"), params.get("local_window"), record["original_length"])
    return {"chunk_size": chunk, "local_size": local, "original_max_position_embeddings": record["original_length"]}


def _serves_own_dca(config: dict[str, Any]) -> bool:
    """config.json carries the dual_chunk_attention_config that matches its ctxext dca patch."""
    written = config.get(DUAL_CHUNK)
    if not written:
        return False
    try:
        return written == sglang_dual_chunk_config(config)
    except CtxextError:
        return False


def serve_commands(config_json: dict[str, Any], path: str | Path) -> list[str]:
    """One line per engine: the command that serves the model at ``path``, or why it cannot."""
    record = config_json.get("ctxext") or {}
    target = record.get("target_length") or config_json.get("max_position_embeddings")
    where = shlex.quote(str(path))
    views = engine_view(config_json)
    lines = []
    t5, t4 = views["transformers-5"], views["transformers-4"]
    if t5.extended:
        lines.append(f"transformers: AutoModelForCausalLM.from_pretrained({str(path)!r})")
    else:
        lines.append(f"transformers: {t5.note}; ctxext re-applies it: ctxext.from_pretrained({str(path)!r})")
    if t4.note and not t4.extended and t5.extended:
        lines.append(f"transformers 4.x: cannot: {t4.note}")
    for engine, name in (("vllm", "vLLM"), ("sglang", "SGLang")):
        view = views[engine]
        if not view.extended:
            lines.append(
                f"{name}: cannot serve the extension: {view.note or 'the rope it reads is not the patched one'}"
            )
            continue
        if engine == "vllm":
            env = "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 " if target > (view.longest_by_flag or view.max_length) else ""
            command = f"{env}vllm serve {where} --max-model-len {target}"
        else:
            env = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 " if target > view.max_length else ""
            command = f"{env}python -m sglang.launch_server --model-path {where} --context-length {target}"
        if view.max_length > target:
            command += f"  # without it {name} would accept {view.max_length} tokens"
        lines.append(f"{name}: {command}")
    return lines
