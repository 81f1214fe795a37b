"""Atomic writes: readers see the old file or folder or the new one, never half of one.

``atomic_write(path, data)`` replaces one file; ``new_file(path)`` streams a new one that
appears only when complete and never replaces a file that appeared meanwhile. ``staged(target)`` is the one way ctxext
writes a folder: it yields an empty staging folder beside ``target`` (in ``target``'s
parent, never inside a folder being read or copied); when the block ends without error the
staging folder becomes ``target`` by one rename (``merge=True``: each item in it is renamed
into the existing ``target``, one atomic rename per item). On any exception, Ctrl-C
included, the staging folder is removed, so nothing half-written is left behind.

``exclusive(directory)`` keeps a second ctxext process from editing the same directory at
the same time (an advisory lock on the directory itself, so no lock file is left behind);
``lock_directory`` is the same lock for a writer that holds it beyond one block (an eval run).

Files keep their mode: a replaced file keeps the one it had (and its owner where the
process may set it), a new file or folder gets the mode the umask gives, not the private
mode of a temporary file.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CtxextError

STAGING_MARK = ".ctxext-staging-"


def usual_mode(directory: bool) -> int:
    """The mode a new file (or folder) gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _copy_ownership(source: Path, destination: str | Path) -> None:
    info = source.stat()
    os.chmod(destination, info.st_mode & 0o7777)
    if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.chown(destination, info.st_uid, info.st_gid)
        except PermissionError:
            pass  # only root may give a file away; the mode is kept all the same


def _fresh_path(parent: Path, prefix: str, suffix: str = "") -> Path:
    """An unused name in ``parent``; nothing is created. Callers create it inside the block that
    removes it, so a Ctrl-C can never fall between creating a temporary and guarding it."""
    return parent / f"{prefix}{secrets.token_hex(8)}{suffix}"


def _new_temporary_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def atomic_write(path: Path, data: bytes, like: Path | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file beside it, fsync, rename).

    The new file takes the mode and owner of ``like`` (default: ``path`` itself when it
    exists), else the umask's usual mode.
    """
    path = Path(path)
    like = like if like is not None else path
    tmp = _fresh_path(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(_new_temporary_file(tmp), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if like.exists():
            _copy_ownership(like, tmp)
        else:
            os.chmod(tmp, usual_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged(target: Path, *, merge: bool = False, replace: bool = False) -> Iterator[Path]:
    """Yield a staging folder whose content becomes ``target`` when the block succeeds.

    Without ``merge``, ``target`` must be absent or an empty folder, or ``replace=True``
    lets a previous ``target`` be swapped out (and then deleted) after the new one is complete.
    """
    target = Path(target)
    staging = _fresh_path(target.parent, f".{target.name}{STAGING_MARK}")
    old = _fresh_path(target.parent, f".{target.name}.ctxext-old-")
    try:
        os.mkdir(staging, 0o700)
        yield staging
        if merge:
            for item in sorted(staging.iterdir()):
                os.replace(item, target / item.name)
            return
        staging.chmod(usual_mode(directory=True))
        if not (replace and target.exists()):
            os.replace(staging, target)
            return
        os.mkdir(old, 0o700)
        os.replace(target, old / target.name)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(old / target.name, target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def lock_directory(directory: Path) -> int:
    """Take an exclusive lock on ``directory``; returns the descriptor whose closing releases it. Refuses
    if another process holds it (``patch``, ``unpatch``, an ``eval`` or ``finetune`` writing there)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CtxextError(
            f"{directory}: another ctxext command is writing here; try again when it has finished"
        ) from None
    return fd


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold :func:`lock_directory` on ``directory`` for the block."""
    fd = lock_directory(directory)
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def locked_output(directory: Path) -> Iterator[None]:
    """Create the output folder ``directory`` if it is missing and hold :func:`lock_directory` on it for the
    block; a folder this call created is removed again when the block fails before writing into it."""
    try:
        directory.mkdir()
        created = True
    except FileExistsError:  # an empty folder the user made, a run to resume, or a second writer racing us
        created = False
    try:
        with exclusive(directory):
            yield
    except BaseException:
        if created and not any(directory.iterdir()):
            directory.rmdir()
        raise


@contextmanager
def new_file(output: Path) -> Iterator[BinaryIO]:
    """Yield a handle on a temporary file beside ``output`` that becomes ``output`` when the block succeeds.

    Removed on any exception (Ctrl-C included); never replaces a file that appeared meanwhile.
    """
    tmp = _fresh_path(output.parent, f".{output.name}.", ".ctxext-tmp")
    try:
        with os.fdopen(_new_temporary_file(tmp), "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, usual_mode(directory=False))
        try:
            os.link(tmp, output)  # fails if output exists: no file is ever overwritten
        except FileExistsError:
            raise CtxextError(f"{output}: output appeared while it was being written; nothing replaced") from None
        except OSError:  # a file system without hard links
            if output.exists():
                raise CtxextError(f"{output}: output appeared while it was being written; nothing replaced") from None
            os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def json_bytes(data: Any, *, indent: int = 2, sort_keys: bool = False, default: Any = None) -> bytes:
    """``data`` as the JSON files ctxext writes: indented, UTF-8, one trailing newline."""
    return (json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n").encode("utf-8")


def write_json(path: Path, data: Any, **options: Any) -> None:
    """Write ``data`` as JSON (``json_bytes``'s ``options``) atomically to ``path``."""
    atomic_write(Path(path), json_bytes(data, **options))
