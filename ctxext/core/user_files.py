"""Checks of the files a user names: a readable regular file (never a directory, pipe or device, whose read
would block or mean nothing), and a text file that holds text, each refused in one line saying what it is."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import CtxextError

FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def permitted(path: Path, access: int, mode_bits: int) -> bool:
    # The mode bits are checked too: root passes os.access() on read-only files.
    return os.access(path, access) and bool(stat.S_IMODE(path.stat().st_mode) & mode_bits)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor missing ("a named pipe (FIFO)", ...)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return next((kind for test, kind in FILE_KINDS if test(mode)), None)


def check_regular_file(path: Path, what: str, label: str | None = None) -> None:
    """Refuse ``path`` unless it is a readable regular file (links followed); ``what`` is its role ("text
    file"), ``label`` the message's start (default: the path)."""
    label = label or str(path)
    if not path.exists():
        raise CtxextError(f"{label}: no such {what}")
    kind = special_kind(path)
    if kind is not None:
        raise CtxextError(f"{label}: is {kind}, not a {what}")
    if not permitted(path, os.R_OK, 0o444):
        raise CtxextError(f"{label}: not readable")


def read_text_file(path: Path, what: str = "text file", label: str | None = None) -> str:
    """The UTF-8 text of a user's text file, refused if it is not a readable regular file or holds binary
    data (a NUL byte: an executable, an archive, a model file) or other bytes than UTF-8."""
    check_regular_file(path, what, label)
    label = label or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CtxextError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise CtxextError(f"{label}: holds binary data (a NUL byte at offset {nul}), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CtxextError(f"{label}: not UTF-8 text (byte {exc.start})") from None
