"""Reading a GGUF file's layout (header, typed metadata keys, tensor infos) without decoding arrays or tensors.

The one GGUF reader of ctxext: every count and offset is checked against the file's size before use.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CtxextError

# GGUF value types (gguf.constants.GGUFValueType)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
_INTEGERS = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)


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
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CtxextError(f"{self.path}: a GGUF string is not UTF-8 at byte {self.pos - length}") from None

    def skip_string(self) -> None:
        length = self.take("Q")  # read first: `pos += take()` would add to the pos from before the read
        self.pos += length

    def value(self, kind: int, decode: bool) -> Any:
        if kind in SCALAR_FORMATS:
            return self.take(SCALAR_FORMATS[kind])
        if kind == STRING:
            if decode:
                return self.string()
            self.skip_string()
            return None
        if kind == ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in SCALAR_FORMATS:
                self.pos += struct.calcsize(SCALAR_FORMATS[item]) * count
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
    data_offset = aligned(cursor.pos, alignment)
    if data_offset + max((t.data_end for t in tensors), default=0) > len(data):
        raise CtxextError(f"{path}: truncated GGUF file (tensor data ends past the end of the file)")
    return GGUFLayout(
        path, order, version, fields, tensors, (infos_start, cursor.pos), alignment, data_offset, len(data)
    )


def _tensor_end(shape: list[int], ggml_type: int, offset: int) -> int:
    """Where a tensor's data ends in the data section (its start for a type this gguf package does not know)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return offset  # copied as bytes all the same
    return offset + math.prod(shape) * size // block


def aligned(offset: int, alignment: int) -> int:
    return offset + (-offset) % alignment


def typed_field(layout: GGUFLayout, key: str) -> dict[str, Any] | None:
    """A metadata value with its GGUF type, as ``ctxext.original_metadata`` keeps it (None: absent)."""
    entry = layout.fields.get(key)
    if entry is None:
        return None
    if entry.type == ARRAY:
        raise CtxextError(f"{layout.path}: {key} is an array; ctxext cannot patch this file's rope metadata")
    return {"type": entry.type, "value": entry.value}


def int_type(layout: GGUFLayout, key: str) -> int:
    entry = layout.fields.get(key)
    return entry.type if entry is not None and entry.type in _INTEGERS else UINT32
