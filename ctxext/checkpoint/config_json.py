"""Safe edits of a model directory's config.json and its byte-for-byte backup.

Every write is atomic (see ``atomic.py``). Before the first patch the original config.json is kept byte for
byte as ``config.json.ctxext-orig``; ``unpatch`` renames it back. Nothing is touched until every check passed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..core.config_check import check_buildable, check_config_fields
from ..core.record import ExtensionRecord
from ..errors import CtxextError
from ..serving import BASE_KEYS
from .atomic import atomic_write, json_bytes

CONFIG = "config.json"
BACKUP = "config.json.ctxext-orig"


def read_config_json(directory: Path, name: str = CONFIG) -> tuple[bytes, dict[str, Any]]:
    """(raw bytes, parsed object) of a JSON config file in ``directory``; one-line errors."""
    path = directory / name
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CtxextError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CtxextError(f"{path}: not a JSON object")
    return raw, data


def check_config_json(directory: Path) -> None:
    """Refuse a directory whose config.json lacks a field ctxext reads or has one out of range, before
    transformers parses it (which would fail with its own traceback, or accept a NaN base), or one that
    transformers' own validators refuse."""
    fields, source = read_config_json(directory)[1], str(directory / CONFIG)
    check_config_fields(fields, source)
    check_buildable(fields, source, "transformers refuses this config")


def write_patched_config(directory: Path, original_raw: bytes | None, patched: dict[str, Any]) -> None:
    """Keep the original config.json (first patch only, when there is one), then write the patched one."""
    backup = directory / BACKUP
    if original_raw is not None and not backup.exists():
        atomic_write(backup, original_raw, like=directory / CONFIG)
    atomic_write(directory / CONFIG, json_bytes(patched, sort_keys=True))


def recorded_original(data: dict[str, Any], record: ExtensionRecord) -> dict[str, Any]:
    """A patched config.json with the fields its record replaced put back and the record dropped."""
    original = {k: v for k, v in data.items() if k not in ("ctxext", "rope_scaling")}  # rope_scaling: the patch's copy
    original.update(record.replaced)
    for name, value in record.replaced.items():
        if value is None:  # a section the patch added (an engine's), absent from the original
            original.pop(name)
    rope = record.replaced.get("rope_parameters")
    for key in BASE_KEYS:  # the patch's top-level copies of the base
        if key in original and isinstance(rope, dict) and "rope_theta" in rope:
            original[key] = rope["rope_theta"]
    for name in record.added or []:  # keys the patch added, absent from the original
        original.pop(name, None)
    return original


def read_backup(directory: Path, record: ExtensionRecord) -> tuple[bytes, dict[str, Any]]:
    """The kept original config.json, if it is one: a JSON object without a ctxext record whose
    lengths and rope base agree with what ``record`` says the patch replaced."""
    path = directory / BACKUP
    try:
        raw, data = read_config_json(directory, BACKUP)
    except CtxextError as exc:
        raise CtxextError(f"{exc}; it is not a usable original, config.json left as it is") from None
    if "ctxext" in data:
        raise CtxextError(
            f"{path} carries a ctxext record: it is a patched config, not the original; config.json left as it is"
        )
    for name, value in _comparable(record.replaced).items():
        if name in data and data[name] != value:
            raise CtxextError(
                f"{path} does not match the patch record ({name} {data[name]!r}, the record says "
                f"{value!r}); config.json left as it is"
            )
    if record.original_sha256 is not None and sha256(raw) != record.original_sha256:
        raise CtxextError(
            f"{path} is not the original the patch kept (its sha256 differs from the patch record's); "
            "config.json left as it is"
        )
    return raw, data


def _comparable(replaced: dict[str, Any]) -> dict[str, Any]:
    """The replaced fields a config.json spells the same way: lengths, and the rope base."""
    fields = {k: replaced[k] for k in ("max_position_embeddings", "original_max_position_embeddings") if k in replaced}
    rope = replaced.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        fields["rope_theta"] = rope["rope_theta"]
    return fields


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def edits_since_patch(data: dict[str, Any], record: ExtensionRecord, original: dict[str, Any]) -> list[str]:
    """Top-level keys of the patched config.json ``data`` that differ from the kept ``original`` beyond what the
    patch changed: edits made after the patch, which restoring the original would drop."""
    unpatched = recorded_original(data, record)
    return sorted(k for k in set(unpatched) | set(original) if unpatched.get(k) != original.get(k))


def unpatch_config(directory: Path, record: ExtensionRecord) -> str:
    """Give back the original config.json of a patched directory; returns how it was done.

    The backup is restored only when it is the file the patch kept (``read_backup``) and config.json holds
    no edits made after the patch (those would be lost): both are refused with config.json left as it is.
    """
    backup = directory / BACKUP
    if backup.exists():
        _, original = read_backup(directory, record)
        _, data = read_config_json(directory)
        edited = edits_since_patch(data, record, original)
        if edited:
            raise CtxextError(
                f"{directory / CONFIG} was edited after the patch ({', '.join(edited)}): restoring {BACKUP} "
                "would drop those edits; config.json left as it is (carry them over to the backup by hand, or "
                "remove the ctxext section and the backup yourself)"
            )
        os.replace(backup, directory / CONFIG)
        return "restored the original config.json byte for byte"
    _, data = read_config_json(directory)
    atomic_write(directory / CONFIG, json_bytes(recorded_original(data, record), sort_keys=True))
    return f"no {BACKUP} found: wrote the recorded original rope fields back"
