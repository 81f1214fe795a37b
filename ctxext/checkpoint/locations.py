"""Model locations on disk: a directory, a .gguf file or the default model's alias, and checks on folders."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.user_files import permitted, special_kind
from ..errors import CtxextError
from .atomic import staged
from .config_json import BACKUP, CONFIG
from .default_model import ALIAS, default_model_path


@dataclass(frozen=True)
class ModelLocation:
    directory: Path
    gguf_file: str | None  # file name inside ``directory`` for GGUF checkpoints


def resolve_model_path(path: str | os.PathLike) -> ModelLocation:
    """A model directory (with config.json), a .gguf file, or the alias ``smollm2``."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise CtxextError(f"a model path must be text (str or pathlib.Path), got {type(path).__name__}")
    if str(path) == ALIAS:
        gguf = default_model_path()
        return ModelLocation(gguf.parent, gguf.name)
    p = Path(path).expanduser()
    if not p.exists():
        raise CtxextError(f"{p}: no such file or directory")
    kind = special_kind(p)
    if kind is not None and kind != "a directory":
        raise CtxextError(f"{p}: is {kind}, not a model directory or a .gguf file")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise CtxextError(f"{p}: expected a model directory or a .gguf file")
        if not permitted(p, os.R_OK, 0o444):
            raise CtxextError(f"{p}: not readable")
        return ModelLocation(p.parent, p.name)
    if not permitted(p, os.R_OK | os.X_OK, 0o444):
        raise CtxextError(f"{p}: directory is not readable")
    if not (p / CONFIG).is_file():
        raise CtxextError(f"{p}: no config.json in this directory")
    return ModelLocation(p, None)


def check_writable(directory: Path) -> None:
    if not permitted(directory, os.W_OK | os.X_OK, 0o222):
        raise CtxextError(f"{directory}: directory is read-only")
    for name in (CONFIG, BACKUP):
        path = directory / name
        if path.exists() and not permitted(path, os.W_OK, 0o222):
            raise CtxextError(f"{path}: file is read-only")


def copy_model_dir(source: Path, output: Path) -> None:
    """Copy a model directory to a new ``output`` directory, all or nothing."""
    ensure_new_output(output)
    if output.resolve().is_relative_to(source.resolve()):
        raise CtxextError(f"{output}: the output must not lie inside the model directory {source}")
    with staged(output) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BACKUP))


def ensure_new_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CtxextError(f"{output}: output already exists and is not an empty directory")
    parent = output.parent
    if not parent.is_dir():
        raise CtxextError(f"{parent}: no such directory for the output")
    if not permitted(parent, os.W_OK | os.X_OK, 0o222):
        raise CtxextError(f"{parent}: directory is read-only")
