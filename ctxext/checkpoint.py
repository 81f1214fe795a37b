"""Model locations on disk and safe edits of a model directory's config.json.

Every write is atomic (temporary file in the same directory, fsync, rename). Before the
first patch the original config.json is kept byte for byte as ``config.json.ctxext-orig``;
``unpatch`` renames it back. Nothing in a directory is touched until every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .default_model import ALIAS, default_model_path
from .errors import CtxextError

CONFIG = "config.json"
BACKUP = "config.json.ctxext-orig"


@dataclass(frozen=True)
class ModelLocation:
    directory: Path
    gguf_file: str | None  # file name inside ``directory`` for GGUF checkpoints


def resolve_model_path(path: str | os.PathLike) -> ModelLocation:
    """A model directory (with config.json), a .gguf file, or the alias ``smollm2``."""
    if str(path) == ALIAS:
        gguf = default_model_path()
        return ModelLocation(gguf.parent, gguf.name)
    p = Path(path).expanduser()
    if not p.exists():
        raise CtxextError(f"{p}: no such file or directory")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise CtxextError(f"{p}: expected a model directory or a .gguf file")
        if not _permitted(p, os.R_OK, 0o444):
            raise CtxextError(f"{p}: not readable")
        return ModelLocation(p.parent, p.name)
    if not _permitted(p, os.R_OK | os.X_OK, 0o444):
        raise CtxextError(f"{p}: directory is not readable")
    if not (p / CONFIG).is_file():
        raise CtxextError(f"{p}: no config.json in this directory")
    return ModelLocation(p, None)


def read_config_json(directory: Path) -> tuple[bytes, dict[str, Any]]:
    raw = (directory / CONFIG).read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CtxextError(f"{directory / CONFIG}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CtxextError(f"{directory / CONFIG}: not a JSON object")
    return raw, data


def _permitted(path: Path, access: int, mode_bits: int) -> bool:
    # The mode bits are checked too: root passes os.access() on read-only files.
    return os.access(path, access) and bool(stat.S_IMODE(path.stat().st_mode) & mode_bits)


def check_writable(directory: Path) -> None:
    if not _permitted(directory, os.W_OK | os.X_OK, 0o222):
        raise CtxextError(f"{directory}: directory is read-only")
    for name in (CONFIG, BACKUP):
        path = directory / name
        if path.exists() and not _permitted(path, os.W_OK, 0o222):
            raise CtxextError(f"{path}: file is read-only")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_patched_config(directory: Path, original_raw: bytes, patched: dict[str, Any]) -> None:
    """Keep the original config.json (first patch only), then write the patched one."""
    backup = directory / BACKUP
    if not backup.exists():
        atomic_write(backup, original_raw)
    atomic_write(directory / CONFIG, (json.dumps(patched, indent=2, sort_keys=True) + "\n").encode())


def unpatch_config(directory: Path, original_fields: dict[str, Any] | None) -> str:
    """Give back the original config.json; returns how it was done."""
    backup = directory / BACKUP
    if backup.exists():
        os.replace(backup, directory / CONFIG)
        return "restored the original config.json byte for byte"
    if original_fields is None:
        raise CtxextError(f"{directory}: config.json carries no ctxext patch")
    _, data = read_config_json(directory)
    data.pop("ctxext", None)
    data.update(original_fields)
    atomic_write(directory / CONFIG, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return f"no {BACKUP} found: wrote the recorded original rope fields back"


def copy_model_dir(source: Path, output: Path) -> None:
    """Copy a model directory to a new ``output`` directory, all or nothing."""
    ensure_new_output(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BACKUP))
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_new_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CtxextError(f"{output}: output already exists and is not an empty directory")
    parent = output.parent
    if not parent.is_dir():
        raise CtxextError(f"{parent}: no such directory for the output")
    if not _permitted(parent, os.W_OK | os.X_OK, 0o222):
        raise CtxextError(f"{parent}: directory is read-only")
