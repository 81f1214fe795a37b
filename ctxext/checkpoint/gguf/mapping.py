"""Mapping between transformers rope parameters and llama.cpp's GGUF rope keys, both ways, and the patch plan.

``pi`` -> scaling.type linear + factor; ``yarn`` -> yarn + factor + original_context_length
(+ yarn_beta_fast / yarn_beta_slow / attn_factor when not the defaults); ``ntk`` -> a new
freq_base with scaling.type none; ``llama3`` -> scaling.type none and a new F32 tensor
``rope_freqs.weight``, the per-pair frequency divisors llama.cpp's rope applies (what
llama.cpp's convert_hf_to_gguf.py writes for a llama3 checkpoint), appended after the
existing tensor data, whose bytes and offsets stay as they are; context_length = the target
length in every case. The names of added tensors are kept under ``ctxext.added_tensors``, so
a ``replace`` patch drops them again. What a GGUF cannot express is refused before anything
is written.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.plan import ExtensionPlan, plan_fresh
from ...core.record import ExtensionRecord
from ...core.registry import get_method
from ...errors import CtxextError
from .reader import FLOAT32, SCALAR_FORMATS, STRING, UINT32, GGUFLayout, int_type, read_layout, typed_field

RECORD_KEY = "ctxext.record"
ORIGINAL_KEY = "ctxext.original_metadata"
ADDED_KEY = "ctxext.added_tensors"
ROPE_FREQS = "rope_freqs.weight"
YARN_BETA_DEFAULTS = (32.0, 1.0)  # llama.cpp's (and the YaRN paper's) beta_fast, beta_slow

_DYNAMIC = "llama.cpp has no dynamic rope scaling in GGUF metadata (use yarn, pi or ntk)"
_UNEXPRESSIBLE = {
    "dynamic-ntk": _DYNAMIC,
    "dynamic-yarn": _DYNAMIC,
    "longrope": "llama.cpp takes longrope from extra rope-factor tensors (rope_factors_long/short.weight), not "
    "from metadata; this export adds only llama3's rope_freqs.weight (use yarn, pi, ntk or llama3, "
    "or patch into a directory)",
}


# -- the patch: planned like a config.json patch, then written as llama.cpp's keys ---------------
@dataclass
class GGUFPatch:
    """What an export writes: new metadata values (None removes a key), tensors added and dropped, how to serve it."""

    plan: ExtensionPlan
    changes: dict[str, tuple[int, Any] | None]  # key -> (GGUF value type, value), None: remove
    added_tensors: dict[str, list[float]]  # name -> F32 values, appended after the existing tensors
    dropped_tensors: tuple[str, ...]  # tensors an earlier ctxext patch added
    original: dict[str, Any]  # key -> {"type", "value"} before any ctxext patch (None: absent), per changed key
    serve_command: str
    stock_loadable: bool  # transformers' GGUF loader reproduces the extension (ntk only)


def plan_gguf_patch(
    layout: GGUFLayout,
    method: str,
    *,
    output: Path,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    replace: bool = False,
    rope_layer_types: list[str] | None = None,
    **params: Any,
) -> GGUFPatch:
    """Check everything and compute the new metadata; nothing is written."""
    rope_method = get_method(method)
    if rope_method.name in _UNEXPRESSIBLE:
        raise CtxextError(
            f"'{rope_method.name}' cannot be written into GGUF metadata: {_UNEXPRESSIBLE[rope_method.name]}"
        )
    if rope_layer_types:
        raise CtxextError("GGUF metadata has one rope setup for all layers; drop rope_layer_types")
    keys = _Keys(layout.architecture)
    if (layout.value("split.count") or 1) > 1:
        raise CtxextError(
            f"{layout.path} is one part of a split GGUF ({layout.value('split.count')} files); "
            "merge it first (llama-gguf-split --merge), then patch the merged file"
        )
    before = _before_ctxext(layout, keys, replace)  # typed values from before an earlier ctxext patch
    dropped = _tensors_added_by_ctxext(layout) if RECORD_KEY in layout.fields else ()
    if ROPE_FREQS in {t.name for t in layout.tensors} - set(dropped):
        raise CtxextError(
            f"{layout.path} already has per-dimension rope factors ({ROPE_FREQS}: llama3 scaling); "
            "ctxext does not replace a GGUF's own tensors: patch the Hugging Face checkpoint and convert it"
        )
    config = _config_from_metadata(layout, keys, before)
    plan = plan_fresh(
        config,
        rope_method.name,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        params=params,
    )
    if plan.method.kind == "attention":
        raise CtxextError(_attention_refusal(plan, layout.path))

    target = plan.record.target_length
    rope = plan.fields["rope_parameters"]
    rope_type = rope.get("rope_type", "default")
    new: dict[str, tuple[int, Any]] = {keys.context: (int_type(layout, keys.context), target)}
    added: dict[str, list[float]] = {}
    beta_flags = ""
    if rope_type == "linear":
        new[keys.scaling_type] = (STRING, "linear")
        new[keys.factor] = (FLOAT32, float(rope["factor"]))
    elif rope_type == "yarn":
        scale = float(rope["factor"])
        new[keys.scaling_type] = (STRING, "yarn")
        new[keys.factor] = (FLOAT32, scale)
        new[keys.original_context] = (UINT32, int(rope["original_max_position_embeddings"]))
        betas = (float(rope.get("beta_fast", 32.0)), float(rope.get("beta_slow", 1.0)))
        if betas != YARN_BETA_DEFAULTS:
            # llama.cpp reads these two keys for a few architectures only; its flags work for all
            new[keys.beta_fast] = (FLOAT32, betas[0])
            new[keys.beta_slow] = (FLOAT32, betas[1])
            beta_flags = f" --yarn-beta-fast {betas[0]:g} --yarn-beta-slow {betas[1]:g}"
        if rope.get("attention_factor") is not None:
            # llama.cpp multiplies cos/sin by attn_factor * (1 + 0.1 ln s); transformers by attention_factor
            new[keys.attn_factor] = (FLOAT32, float(rope["attention_factor"]) / (1 + 0.1 * math.log(scale)))
    elif rope_type == "default":
        new[keys.scaling_type] = (STRING, "none")
        new[keys.freq_base] = (FLOAT32, float(rope["rope_theta"]))
    elif rope_type == "llama3":
        new[keys.scaling_type] = (STRING, "none")  # the scaling is all in the factors, as for a converted Llama 3.1
        added[ROPE_FREQS] = llama3_rope_factors(config, plan)
    else:
        raise CtxextError(f"'{rope_method.name}' writes rope type '{rope_type}', which GGUF metadata cannot express")

    # an earlier ctxext patch is undone first, then every rope scaling key of the file is replaced
    changes: dict[str, tuple[int, Any] | None] = {}
    for key, typed in before.items():
        changes[key] = None if typed is None else (typed["type"], typed["value"])
    changes.update({key: None for key in keys.scaling_keys(layout)})
    changes.update(new)
    original = dict(before)
    for key in changes:
        if key not in original:
            original[key] = typed_field(layout, key)
    changes[RECORD_KEY] = (STRING, json.dumps(plan.record.to_dict(), sort_keys=True))
    changes[ORIGINAL_KEY] = (STRING, json.dumps(original, sort_keys=True))
    changes[ADDED_KEY] = (STRING, json.dumps(sorted(added))) if added else None
    changes = {k: v for k, v in changes.items() if not (v is None and k not in layout.fields)}
    serve = f"llama-server -m {shlex.quote(str(output))} -c {target}{beta_flags}"
    return GGUFPatch(plan, changes, added, dropped, original, serve, stock_loadable=rope_type == "default")


def llama3_rope_factors(config: Any, plan: ExtensionPlan) -> list[float]:
    """llama.cpp's rope_freqs for a llama3 patch: per rotary pair, the native inverse frequency over llama3's.

    llama.cpp divides each pair's angle by its factor, so these reproduce transformers' llama3 frequencies.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from ...core.plan import apply_fields

    native, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    patched = copy.deepcopy(config)
    apply_fields(patched, plan.fields)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](patched, "cpu")
    return (native / scaled).tolist()


class _Keys:
    def __init__(self, arch: str):
        self.arch = arch
        self.context = f"{arch}.context_length"
        self.freq_base = f"{arch}.rope.freq_base"
        self.dimensions = f"{arch}.rope.dimension_count"
        self.scaling_type = f"{arch}.rope.scaling.type"
        self.factor = f"{arch}.rope.scaling.factor"
        self.original_context = f"{arch}.rope.scaling.original_context_length"
        self.attn_factor = f"{arch}.rope.scaling.attn_factor"
        self.beta_fast = f"{arch}.rope.scaling.yarn_beta_fast"
        self.beta_slow = f"{arch}.rope.scaling.yarn_beta_slow"
        self.scale_linear = f"{arch}.rope.scale_linear"  # the old name of scaling.factor

    def scaling_keys(self, layout: GGUFLayout) -> list[str]:
        """Every rope scaling key of the file: a patch replaces all of them."""
        prefix = f"{self.arch}.rope.scaling."
        return [k for k in layout.fields if k.startswith(prefix) or k == self.scale_linear]


def gguf_record(path: str | Path) -> ExtensionRecord | None:
    """The ctxext record a GGUF file patched by ctxext carries, or None."""
    layout = read_layout(Path(path))
    if RECORD_KEY not in layout.fields:
        return None
    try:
        return ExtensionRecord.from_dict(json.loads(layout.value(RECORD_KEY, "")))
    except ValueError:
        raise CtxextError(f"{layout.path}: its {RECORD_KEY} metadata is not a valid ctxext record") from None


def _before_ctxext(layout: GGUFLayout, keys: _Keys, replace: bool) -> dict[str, dict[str, Any] | None]:
    """The values an earlier ctxext patch replaced (empty for a file ctxext never patched); refusals."""
    if RECORD_KEY not in layout.fields:
        scaling = layout.value(keys.scaling_type)
        if scaling not in (None, "none") and not replace:
            raise CtxextError(
                f"{layout.path} already uses '{scaling}' rope scaling ({keys.scaling_type}); "
                "use --replace (replace=True) to replace it"
            )
        return {}
    record = gguf_record(layout.path)
    if not replace:
        raise CtxextError(
            f"{layout.path} is already patched with '{record.method}' by ctxext; "
            "use --replace (replace=True) to patch the original metadata again"
        )
    try:
        before = json.loads(layout.value(ORIGINAL_KEY, ""))
        valid = isinstance(before, dict) and all(
            v is None or (isinstance(v, dict) and v.get("type") in (*SCALAR_FORMATS, STRING) and "value" in v)
            for v in before.values()
        )
    except ValueError:
        valid = False
    if not valid:
        raise CtxextError(
            f"{layout.path}: {ORIGINAL_KEY} is missing or broken, so the metadata from before "
            "the ctxext patch is unknown; patch the original GGUF instead"
        )
    return before


def _tensors_added_by_ctxext(layout: GGUFLayout) -> tuple[str, ...]:
    """The tensors an earlier ctxext patch appended (a replace patch drops them); refusals."""
    if ADDED_KEY not in layout.fields:
        return ()
    try:
        names = json.loads(layout.value(ADDED_KEY, ""))
    except ValueError:
        names = None
    present = {t.name for t in layout.tensors}
    if not isinstance(names, list) or not all(isinstance(n, str) and n in present for n in names):
        raise CtxextError(
            f"{layout.path}: {ADDED_KEY} is broken, so the tensors the ctxext patch added are unknown; "
            "patch the original GGUF instead"
        )
    return tuple(names)


def _config_from_metadata(layout: GGUFLayout, keys: _Keys, before: dict[str, dict[str, Any] | None]):
    """A transformers config carrying just the rope setup llama.cpp reads from the metadata."""
    from transformers import LlamaConfig

    def value(key: str) -> Any:
        if key in before:
            return None if before[key] is None else before[key]["value"]
        return layout.value(key)

    context = value(keys.context)
    if not isinstance(context, int) or context <= 0:
        raise CtxextError(f"{layout.path}: no {keys.context} in the GGUF metadata; ctxext needs the native length")
    base = value(keys.freq_base)
    rotary = value(keys.dimensions)
    if base is None and rotary is None:
        raise CtxextError(
            f"{layout.path}: no rope metadata ({keys.freq_base}, {keys.dimensions}); "
            f"'{keys.arch}' does not look like a RoPE model"
        )
    if rotary is None:  # llama.cpp's default: the head size
        heads = layout.value(f"{keys.arch}.attention.head_count")
        width = layout.value(f"{keys.arch}.attention.key_length")
        embedding = layout.value(f"{keys.arch}.embedding_length")
        rotary = width or (embedding // heads if isinstance(heads, int) and heads and embedding else None)
    if not isinstance(rotary, int) or rotary < 4 or rotary % 2:
        raise CtxextError(f"{layout.path}: cannot tell the rotary dimension from the GGUF metadata ({keys.dimensions})")
    base = 10000.0 if base is None else float(base)  # llama.cpp's default
    return LlamaConfig(
        hidden_size=rotary,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=rotary,
        intermediate_size=1,
        num_hidden_layers=1,
        vocab_size=1,
        max_position_embeddings=context,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )


def group_attention(plan: ExtensionPlan) -> tuple[int, int, int]:
    """llama.cpp's group attention for a self-extend plan: (``--grp-attn-n``, ``--grp-attn-w``, ctxext's window).

    ``--grp-attn-n`` is the group size G; ``--grp-attn-w`` is the window W rounded down to a multiple of G (llama.cpp
    asserts W % G == 0).
    """
    runtime = plan.method.runtime(plan.method_config, plan.scalings[None])
    group, window = int(runtime.group), int(runtime.window)
    return group, max(group, window - window % group), window


def _attention_refusal(plan: ExtensionPlan, path: Path) -> str:
    name = plan.method.name
    if name != "self-extend":
        return (
            f"'{name}' changes attention itself, which GGUF metadata cannot express and llama.cpp does not "
            "implement; use yarn, pi or ntk for a GGUF, or patch into a directory for ctxext.from_pretrained"
        )
    group, flags_window, window = group_attention(plan)
    rounded = (
        f"; W is {flags_window}, not ctxext's {window}: llama.cpp needs a multiple of G"
        if flags_window != window
        else ""
    )
    return (
        f"self-extend is applied by llama.cpp at run time, not stored in GGUF metadata: run the unpatched file "
        f"with llama-completion -m {shlex.quote(str(path))} -c {plan.record.target_length} --grp-attn-n {group} "
        f"--grp-attn-w {flags_window} (llama-cli in older builds; llama-server has no self-extend){rounded}"
    )
