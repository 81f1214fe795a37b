"""Writing a patched GGUF: the input's bytes with its key/value section re-written, tensors copied verbatim.

llama.cpp reads a rope extension from GGUF metadata (``{arch}.context_length``,
``{arch}.rope.freq_base``, ``{arch}.rope.scaling.*``), so a patch that only rewrites those
keys keeps the file's quantization. The new file is the input with its key/value section
re-written: every other key is copied as raw bytes, the tensor infos and the whole tensor
data section are copied verbatim (same order, same offsets, same alignment). The patch
record (``ExtensionRecord``) is stored as JSON under ``ctxext.record``, and the original
values of every key the patch changed under ``ctxext.original_metadata``.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
from pathlib import Path
from typing import Any, BinaryIO

from ...core.user_files import permitted
from ...errors import CtxextError
from ..atomic import new_file
from .mapping import GGUFPatch, plan_gguf_patch
from .reader import SCALAR_FORMATS, STRING, GGUFLayout, aligned, read_layout

GGML_F32 = 0
_COPY_CHUNK = 16 << 20


# -- writing ----------------------------------------------------------------------------------
def _encode(order: str, key: str, kind: int, value: Any) -> bytes:
    raw_key = key.encode("utf-8")
    head = struct.pack(f"{order}Q", len(raw_key)) + raw_key + struct.pack(f"{order}I", kind)
    if kind == STRING:
        raw = str(value).encode("utf-8")
        return head + struct.pack(f"{order}Q", len(raw)) + raw
    return head + struct.pack(order + SCALAR_FORMATS[kind], value)


def _encode_f32_info(order: str, name: str, count: int, offset: int) -> bytes:
    raw_name = name.encode("utf-8")
    return struct.pack(f"{order}Q", len(raw_name)) + raw_name + struct.pack(f"{order}IQIQ", 1, count, GGML_F32, offset)


def _kept_data_end(layout: GGUFLayout, dropped: tuple[str, ...]) -> int:
    """Where the copied data section ends: before the dropped tensors, which ctxext appended last."""
    if not dropped:
        return layout.size - layout.data_offset
    cut = min(t.offset for t in layout.tensors if t.name in dropped)
    if any(t.data_end > cut for t in layout.tensors if t.name not in dropped):
        raise CtxextError(
            f"{layout.path}: the tensors ctxext added are no longer at the end of the data section; "
            "patch the original GGUF instead"
        )
    return cut


def _write(layout: GGUFLayout, patch: GGUFPatch, out: BinaryIO) -> None:
    order, changes = layout.order, patch.changes
    with open(layout.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if len(data) != layout.size:
            raise CtxextError(f"{layout.path} changed while it was being exported; nothing written")
        entries = []
        for key, entry in layout.fields.items():
            if key not in changes:
                entries.append(data[entry.start : entry.end])
            elif changes[key] is not None:
                entries.append(_encode(order, key, *changes[key]))
        entries += [
            _encode(order, key, *change)
            for key, change in changes.items()
            if change is not None and key not in layout.fields
        ]
        infos = [data[t.start : t.end] for t in layout.tensors if t.name not in patch.dropped_tensors]
        kept_end = _kept_data_end(layout, patch.dropped_tensors)
        appended = []  # (offset in the data section, bytes)
        position = kept_end
        for name, values in patch.added_tensors.items():
            position = aligned(position, layout.alignment)
            infos.append(_encode_f32_info(order, name, len(values), position))
            appended.append((position, struct.pack(f"{order}{len(values)}f", *values)))
            position += len(appended[-1][1])
        out.write(b"GGUF" + struct.pack(f"{order}IQQ", layout.version, len(infos), len(entries)))
        for chunk in entries + infos:
            out.write(chunk)
        position = 24 + sum(map(len, entries)) + sum(map(len, infos))
        out.write(b"\0" * (aligned(position, layout.alignment) - position))
        for start in range(layout.data_offset, layout.data_offset + kept_end, _COPY_CHUNK):
            out.write(data[start : min(start + _COPY_CHUNK, layout.data_offset + kept_end)])
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
        raise CtxextError(
            f"{parent}: not enough free space for a copy of {source.name} ({source.stat().st_size} bytes)"
        )


def export_gguf(
    gguf: str | Path, output: str | Path, method: str, *, dry_run: bool = False, **options: Any
) -> tuple[GGUFPatch, str | None]:
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
