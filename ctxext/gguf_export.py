"""Extending a GGUF file through its metadata alone: a new .gguf whose tensors are the input's, byte for byte.

llama.cpp reads a rope extension from GGUF metadata (``{arch}.context_length``,
``{arch}.rope.freq_base``, ``{arch}.rope.scaling.*``), so a patch that only rewrites those
keys keeps the file's quantization. The new file is the input with its key/value section
re-written: every other key is copied as raw bytes, the tensor infos and the whole tensor
data section are copied verbatim (same order, same offsets, same alignment). The patch
record (``ExtensionRecord``) is stored as JSON under ``ctxext.record``, and the original
values of every key the patch changed under ``ctxext.original_metadata``.

Mapping (from the planned transformers rope parameters):
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
import mmap
import os
import shlex
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import new_file
from .checkpoint import permitted
from .config import ExtensionRecord
from .errors import CtxextError
from .plan import ExtensionPlan, plan_extension
from .registry import get_method

RECORD_KEY = "ctxext.record"
ORIGINAL_KEY = "ctxext.original_metadata"
ADDED_KEY = "ctxext.added_tensors"
ROPE_FREQS = "rope_freqs.weight"
GGML_F32 = 0
YARN_BETA_DEFAULTS = (32.0, 1.0)  # llama.cpp's (and the YaRN paper's) beta_fast, beta_slow

# GGUF value types (gguf.constants.GGUFValueType)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALARS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f", BOOL: "?",
            UINT64: "Q", INT64: "q", FLOAT64: "d"}
_INTEGERS = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)

_DYNAMIC = "llama.cpp has no dynamic rope scaling in GGUF metadata (use yarn, pi or ntk)"
_UNEXPRESSIBLE = {
    "dynamic-ntk": _DYNAMIC,
    "dynamic-yarn": _DYNAMIC,
    "longrope": "llama.cpp takes longrope from extra rope-factor tensors (rope_factors_long/short.weight), not "
                "from metadata; this export adds only llama3's rope_freqs.weight (use yarn, pi, ntk or llama3, "
                "or patch into a directory)",
}
_COPY_CHUNK = 16 << 20


# -- reading: the layout of a GGUF file, without decoding its arrays or tensors -------------------
@dataclass
class _Field:
    key: str
    type: int
    start: int  # byte range of the whole key/value entry in the file
    end: int
    value: Any = None  # decoded for scalars and strings; None for arrays


@dataclass
class _Tensor:
    name: str
    start: int  # byte range of its tensor info in the file
    end: int
    offset: int  # where its data starts and ends in the data section
    data_end: int


@dataclass
class GGUFLayout:
    """Where everything is in a GGUF file (v2/v3), and its scalar and string metadata."""

    path: Path
    order: str  # struct byte order of the file: '<' or '>'
    version: int
    fields: dict[str, _Field]
    tensors: list[_Tensor]
    infos: tuple[int, int]  # byte range of the tensor infos
    alignment: int
    data_offset: int
    size: int

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.fields.get(key)
        return default if entry is None or entry.value is None else entry.value

    @property
    def architecture(self) -> str:
        arch = self.value("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise CtxextError(f"{self.path}: no general.architecture in the GGUF metadata")
        return arch


class _Cursor:
    def __init__(self, data: mmap.mmap, order: str, path: Path):
        self.data, self.order, self.path, self.pos = data, order, path, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CtxextError(f"{self.path}: truncated GGUF file (metadata ends past the end of the file)")
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("Q")
        if self.pos + length > len(self.data):
            raise CtxextError(f"{self.path}: truncated GGUF file (metadata ends past the end of the file)")
        raw = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CtxextError(f"{self.path}: a GGUF string is not UTF-8 at byte {self.pos - length}") from None

    def skip_string(self) -> None:
        length = self.take("Q")  # read first: `pos += take()` would add to the pos from before the read
        self.pos += length

    def value(self, kind: int, decode: bool) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == STRING:
            if decode:
                return self.string()
            self.skip_string()
            return None
        if kind == ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in _SCALARS:
                self.pos += struct.calcsize(_SCALARS[item]) * count
            else:
                for _ in range(count):
                    self.value(item, decode=False)
            if self.pos > len(self.data):
                raise CtxextError(f"{self.path}: truncated GGUF file (metadata ends past the end of the file)")
            return None
        raise CtxextError(f"{self.path}: unknown GGUF value type {kind} in the metadata")


def read_layout(path: Path) -> GGUFLayout:
    """Parse a GGUF file's header, metadata and tensor infos; a one-line CtxextError if it is not one."""
    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 24:
            raise CtxextError(f"{path}: not a GGUF file (too short)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data, path)


def _parse(data: mmap.mmap, path: Path) -> GGUFLayout:
    if data[:4] != b"GGUF":
        raise CtxextError(f"{path}: not a GGUF file (no GGUF magic)")
    order = "<"
    version = struct.unpack_from("<I", data, 4)[0]
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        order = ">"
        version = struct.unpack_from(">I", data, 4)[0]
    if version not in (2, 3):
        raise CtxextError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    cursor = _Cursor(data, order, path)
    cursor.pos = 8
    tensor_count, kv_count = cursor.take("Q"), cursor.take("Q")
    fields: dict[str, _Field] = {}
    for _ in range(kv_count):
        start = cursor.pos
        key = cursor.string()
        kind = cursor.take("I")
        value = cursor.value(kind, decode=True)
        if key in fields:
            raise CtxextError(f"{path}: the GGUF key {key} appears twice")
        fields[key] = _Field(key, kind, start, cursor.pos, value)
    infos_start = cursor.pos
    tensors = []
    for _ in range(tensor_count):
        start = cursor.pos
        name = cursor.string()
        shape = [cursor.take("Q") for _ in range(cursor.take("I"))]
        ggml_type, offset = cursor.take("I"), cursor.take("Q")
        tensors.append(_Tensor(name, start, cursor.pos, offset, _tensor_end(shape, ggml_type, offset)))
    alignment = fields["general.alignment"].value if "general.alignment" in fields else 32
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CtxextError(f"{path}: invalid general.alignment {alignment!r}")
    data_offset = _aligned(cursor.pos, alignment)
    if data_offset + max((t.data_end for t in tensors), default=0) > len(data):
        raise CtxextError(f"{path}: truncated GGUF file (tensor data ends past the end of the file)")
    return GGUFLayout(path, order, version, fields, tensors, (infos_start, cursor.pos), alignment,
                      data_offset, len(data))


def _tensor_end(shape: list[int], ggml_type: int, offset: int) -> int:
    """Where a tensor's data ends in the data section (its start for a type this gguf package does not know)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return offset  # copied as bytes all the same
    return offset + math.prod(shape) * size // block


def _aligned(offset: int, alignment: int) -> int:
    return offset + (-offset) % alignment


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


def plan_gguf_patch(layout: GGUFLayout, method: str, *, output: Path, factor: float | None = None,
                    target_length: int | None = None, original_length: int | None = None,
                    replace: bool = False, rope_layer_types: list[str] | None = None,
                    **params: Any) -> GGUFPatch:
    """Check everything and compute the new metadata; nothing is written."""
    rope_method = get_method(method)
    if rope_method.name in _UNEXPRESSIBLE:
        raise CtxextError(f"'{rope_method.name}' cannot be written into GGUF metadata: {_UNEXPRESSIBLE[rope_method.name]}")
    if rope_layer_types:
        raise CtxextError("GGUF metadata has one rope setup for all layers; drop rope_layer_types")
    keys = _Keys(layout.architecture)
    if (layout.value("split.count") or 1) > 1:
        raise CtxextError(f"{layout.path} is one part of a split GGUF ({layout.value('split.count')} files); "
                          "merge it first (llama-gguf-split --merge), then patch the merged file")
    before = _before_ctxext(layout, keys, replace)  # typed values from before an earlier ctxext patch
    dropped = _tensors_added_by_ctxext(layout) if RECORD_KEY in layout.fields else ()
    if ROPE_FREQS in {t.name for t in layout.tensors} - set(dropped):
        raise CtxextError(f"{layout.path} already has per-dimension rope factors ({ROPE_FREQS}: llama3 scaling); "
                          "ctxext does not replace a GGUF's own tensors: patch the Hugging Face checkpoint and convert it")
    config = _config_from_metadata(layout, keys, before)
    plan = plan_extension(config, rope_method.name, factor=factor, target_length=target_length,
                          original_length=original_length, params=params)
    if plan.method.kind == "attention":
        raise CtxextError(_attention_refusal(plan, layout.path))

    target = plan.record.target_length
    rope = plan.fields["rope_parameters"]
    rope_type = rope.get("rope_type", "default")
    new: dict[str, tuple[int, Any]] = {keys.context: (_int_type(layout, keys.context), target)}
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
            original[key] = _typed(layout, key)
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

    from .plan import apply_fields

    native, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    patched = copy.deepcopy(config)
    apply_fields(patched, plan.fields)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](patched, "cpu")
    return (native / scaled).tolist()


def _typed(layout: GGUFLayout, key: str) -> dict[str, Any] | None:
    """A metadata value with its GGUF type, as ``ctxext.original_metadata`` keeps it (None: absent)."""
    entry = layout.fields.get(key)
    if entry is None:
        return None
    if entry.type == ARRAY:
        raise CtxextError(f"{layout.path}: {key} is an array; ctxext cannot patch this file's rope metadata")
    return {"type": entry.type, "value": entry.value}


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
            raise CtxextError(f"{layout.path} already uses '{scaling}' rope scaling ({keys.scaling_type}); "
                              "use --replace (replace=True) to replace it")
        return {}
    record = gguf_record(layout.path)
    if not replace:
        raise CtxextError(f"{layout.path} is already patched with '{record.method}' by ctxext; "
                          "use --replace (replace=True) to patch the original metadata again")
    try:
        before = json.loads(layout.value(ORIGINAL_KEY, ""))
        valid = isinstance(before, dict) and all(
            v is None or (isinstance(v, dict) and v.get("type") in (*_SCALARS, STRING) and "value" in v)
            for v in before.values())
    except ValueError:
        valid = False
    if not valid:
        raise CtxextError(f"{layout.path}: {ORIGINAL_KEY} is missing or broken, so the metadata from before "
                          "the ctxext patch is unknown; patch the original GGUF instead")
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
        raise CtxextError(f"{layout.path}: {ADDED_KEY} is broken, so the tensors the ctxext patch added are unknown; "
                          "patch the original GGUF instead")
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
        raise CtxextError(f"{layout.path}: no rope metadata ({keys.freq_base}, {keys.dimensions}); "
                          f"'{keys.arch}' does not look like a RoPE model")
    if rotary is None:  # llama.cpp's default: the head size
        heads = layout.value(f"{keys.arch}.attention.head_count")
        width = layout.value(f"{keys.arch}.attention.key_length")
        embedding = layout.value(f"{keys.arch}.embedding_length")
        rotary = width or (embedding // heads if isinstance(heads, int) and heads and embedding else None)
    if not isinstance(rotary, int) or rotary < 4 or rotary % 2:
        raise CtxextError(f"{layout.path}: cannot tell the rotary dimension from the GGUF metadata ({keys.dimensions})")
    base = 10000.0 if base is None else float(base)  # llama.cpp's default
    return LlamaConfig(hidden_size=rotary, num_attention_heads=1, num_key_value_heads=1, head_dim=rotary,
                       intermediate_size=1, num_hidden_layers=1, vocab_size=1, max_position_embeddings=context,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": base})


def _int_type(layout: GGUFLayout, key: str) -> int:
    entry = layout.fields.get(key)
    return entry.type if entry is not None and entry.type in _INTEGERS else UINT32


def _attention_refusal(plan: ExtensionPlan, path: Path) -> str:
    name = plan.method.name
    if name != "self-extend":
        return (f"'{name}' changes attention itself, which GGUF metadata cannot express and llama.cpp does not "
                "implement; use yarn, pi or ntk for a GGUF, or patch into a directory for ctxext.from_pretrained")
    runtime = plan.method.runtime(plan.method_config, plan.scalings[None])
    group, window = int(runtime.group), int(runtime.window)
    flags_window = max(group, window - window % group)  # llama.cpp asserts W % G == 0
    rounded = (f"; W is {flags_window}, not ctxext's {window}: llama.cpp needs a multiple of G"
               if flags_window != window else "")
    return (f"self-extend is applied by llama.cpp at run time, not stored in GGUF metadata: run the unpatched file "
            f"with llama-completion -m {shlex.quote(str(path))} -c {plan.record.target_length} --grp-attn-n {group} "
            f"--grp-attn-w {flags_window} (llama-cli in older builds; llama-server has no self-extend){rounded}")


# -- writing ----------------------------------------------------------------------------------
def _encode(order: str, key: str, kind: int, value: Any) -> bytes:
    raw_key = key.encode("utf-8")
    head = struct.pack(f"{order}Q", len(raw_key)) + raw_key + struct.pack(f"{order}I", kind)
    if kind == STRING:
        raw = str(value).encode("utf-8")
        return head + struct.pack(f"{order}Q", len(raw)) + raw
    return head + struct.pack(order + _SCALARS[kind], value)


def _encode_f32_info(order: str, name: str, count: int, offset: int) -> bytes:
    raw_name = name.encode("utf-8")
    return (struct.pack(f"{order}Q", len(raw_name)) + raw_name
            + struct.pack(f"{order}IQIQ", 1, count, GGML_F32, offset))


def _kept_data_end(layout: GGUFLayout, dropped: tuple[str, ...]) -> int:
    """Where the copied data section ends: before the dropped tensors, which ctxext appended last."""
    if not dropped:
        return layout.size - layout.data_offset
    cut = min(t.offset for t in layout.tensors if t.name in dropped)
    if any(t.data_end > cut for t in layout.tensors if t.name not in dropped):
        raise CtxextError(f"{layout.path}: the tensors ctxext added are no longer at the end of the data section; "
                          "patch the original GGUF instead")
    return cut


def _write(layout: GGUFLayout, patch: GGUFPatch, out: BinaryIO) -> None:
    order, changes = layout.order, patch.changes
    with open(layout.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if len(data) != layout.size:
            raise CtxextError(f"{layout.path} changed while it was being exported; nothing written")
        entries = []
        for key, entry in layout.fields.items():
            if key not in changes:
                entries.append(data[entry.start:entry.end])
            elif changes[key] is not None:
                entries.append(_encode(order, key, *changes[key]))
        entries += [_encode(order, key, *change) for key, change in changes.items()
                    if change is not None and key not in layout.fields]
        infos = [data[t.start:t.end] for t in layout.tensors if t.name not in patch.dropped_tensors]
        kept_end = _kept_data_end(layout, patch.dropped_tensors)
        appended = []  # (offset in the data section, bytes)
        position = kept_end
        for name, values in patch.added_tensors.items():
            position = _aligned(position, layout.alignment)
            infos.append(_encode_f32_info(order, name, len(values), position))
            appended.append((position, struct.pack(f"{order}{len(values)}f", *values)))
            position += len(appended[-1][1])
        out.write(b"GGUF" + struct.pack(f"{order}IQQ", layout.version, len(infos), len(entries)))
        for chunk in entries + infos:
            out.write(chunk)
        position = 24 + sum(map(len, entries)) + sum(map(len, infos))
        out.write(b"\0" * (_aligned(position, layout.alignment) - position))
        for start in range(layout.data_offset, layout.data_offset + kept_end, _COPY_CHUNK):
            out.write(data[start:min(start + _COPY_CHUNK, layout.data_offset + kept_end)])
        position = kept_end
        for offset, raw in appended:
            out.write(b"\0" * (offset - position) + raw)
            position = offset + len(raw)


def check_new_gguf_output(output: Path, source: Path) -> None:
    if output.suffix.lower() != ".gguf":
        raise CtxextError(f"{output}: a GGUF output must end in .gguf")
    if output.exists() or output.is_symlink():
        raise CtxextError(f"{output}: output already exists; give a new .gguf path")
    parent = output.parent
    if not parent.is_dir():
        raise CtxextError(f"{parent}: no such directory for the output")
    if not permitted(parent, os.W_OK | os.X_OK, 0o222):
        raise CtxextError(f"{parent}: directory is read-only")
    if shutil.disk_usage(parent).free < source.stat().st_size:
        raise CtxextError(f"{parent}: not enough free space for a copy of {source.name} "
                          f"({source.stat().st_size} bytes)")


def export_gguf(gguf: str | Path, output: str | Path, method: str, *, dry_run: bool = False,
                **options: Any) -> tuple[GGUFPatch, str | None]:
    """Write ``output``, a new GGUF: ``gguf``'s tensors, byte for byte, with the extension in its metadata.

    ``options`` are the lengths, ``replace``, ``rope_layer_types`` and the method's parameters.
    Returns the patch and, for a dry run (nothing written), the metadata diff.
    """
    source, output = Path(gguf), Path(output)
    if not dry_run:
        check_new_gguf_output(output, source)
    layout = read_layout(source)
    patch = plan_gguf_patch(layout, method, output=output, **options)
    if dry_run:
        return patch, _diff(layout, patch)
    with new_file(output) as handle:
        _write(layout, patch, handle)
    return patch, None


def _diff(layout: GGUFLayout, patch: GGUFPatch) -> str:
    lines = [f"--- {layout.path.name}", f"+++ {layout.path.name} (patched)"]
    for key, change in patch.changes.items():
        if key in layout.fields:
            lines.append(f"-{key} = {json.dumps(layout.value(key))}")
        if change is not None:
            lines.append(f"+{key} = {json.dumps(change[1])}")
    lines += [f"-tensor {name}" for name in patch.dropped_tensors]
    lines += [f"+tensor {name} F32 {json.dumps(values)}" for name, values in patch.added_tensors.items()]
    return "\n".join(lines)
