"""The run directory's append-only record log, which is what makes a run resumable.

Every finished unit of work (one sample of one task at one length for one method) is
appended to ``records.jsonl`` as one JSON line and flushed at once; a rerun with the same
``--out`` skips the keys already there. ``run.json`` keeps the settings the records depend
on (model, factor, seed, ...) so that a rerun with other settings is refused rather than
mixed in.

Opening a store only checks (nothing is written): ``--out`` must be new, an empty folder or
a ctxext run (a folder with ``run.json``) made with the same settings, and writable. The
folder and ``run.json`` are written by :meth:`RecordStore.begin`, which the runner calls once
every check has passed (at the first record, or before the report), so that a refused run
leaves nothing behind and never blocks the corrected rerun. While the store is open the folder is
locked: a second run into the same ``--out`` at the same time is refused instead of mixing its records in.

Every record names the backend that made it (``ctxext eval --backend``; records from before the field are
transformers'). A store resumes its own backend's records (``records``); those of the other backends that ran
into the same folder are kept apart (``others``), for the report to put beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoint.atomic import atomic_write, lock_directory, write_json
from ..core.user_files import permitted
from ..errors import CtxextError

RECORDS = "records.jsonl"
SETTINGS = "run.json"
DEFAULT_BACKEND = "transformers"


def record_key(record: dict) -> tuple:
    return record["method"], record["task"], record["length"], record["sample"]


def record_backend(record: dict) -> str:
    return record.get("backend", DEFAULT_BACKEND)


class RecordStore:
    """The records of one run directory, locked against a second writer while the store is open (a ``with``
    block): a run that finds the directory held by another is refused, whether it existed or is created."""

    def __init__(self, directory: Path, settings: dict, backend: str = DEFAULT_BACKEND):
        self.directory = Path(directory)
        self.settings = settings
        self.backend = backend
        self.records: dict[tuple, dict] = {}  # this backend's, by record_key
        self.others: dict[str, dict[tuple, dict]] = {}  # backend -> its records, by record_key
        self._started = False
        self._cut = False  # records.jsonl ends with half a line (an interrupted write), trimmed by begin()
        self._lock: int | None = None
        try:
            self._check_directory()
            if self.directory.is_dir():
                self._lock = lock_directory(self.directory)
            self._read_records()
        except OSError as exc:
            self.close()
            raise CtxextError(f"{self.directory}: cannot write the report there ({exc.strerror or exc})") from None
        except CtxextError:
            self.close()
            raise

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the directory for the next writer."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _check_directory(self) -> None:
        """Refuse an --out that is not new, empty or a run of ours with these settings; write nothing."""
        out = self.directory
        if not out.exists():
            existing = next(p for p in [out, *out.parents] if p.exists() or p == p.parent)
            if not existing.is_dir():
                raise CtxextError(f"{out}: cannot write the report there ({existing} is not a directory)")
            if not permitted(existing, os.W_OK | os.X_OK, 0o222):
                raise CtxextError(f"{out}: cannot write the report there ({existing} is read-only)")
            return
        if not out.is_dir():
            raise CtxextError(f"{out}: cannot write the report there (it is a file, not a directory)")
        if not permitted(out, os.R_OK | os.X_OK, 0o444) or not permitted(out, os.W_OK | os.X_OK, 0o222):
            raise CtxextError(f"{out}: cannot write the report there (the directory is read-only or unreadable)")
        settings_path = out / SETTINGS
        if not settings_path.exists():
            if any(out.iterdir()):
                raise CtxextError(
                    f"{out}: the directory is not empty and holds no ctxext eval run (no {SETTINGS}); "
                    "give a new or empty --out directory"
                )
            return
        try:
            saved = json.loads(settings_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, dict) or not {"model", "seed"} <= set(saved):
            raise CtxextError(
                f"{settings_path} is not the settings file of a ctxext eval run; give a new or empty --out directory"
            )
        changed = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
        if changed:
            raise CtxextError(
                f"{out} holds a run with other settings ({', '.join(changed)}); use another --out directory"
            )
        self._started = True  # the folder and its run.json exist already

    def _read_records(self) -> None:
        path = self.directory / RECORDS
        if not path.is_file():
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):  # the last line was cut short by an interruption
            text = text[: text.rfind("\n") + 1]
            self._cut = True
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                backend = record_backend(record)
                found = self.records if backend == self.backend else self.others.setdefault(backend, {})
                found[record_key(record)] = record
            except (ValueError, KeyError, TypeError):
                raise CtxextError(
                    f"{path}:{number}: not a ctxext eval record; the run's log is damaged (use another --out directory)"
                ) from None

    def begin(self) -> None:
        """Create the folder and its ``run.json`` (once every check passed); trim a cut-short last record."""
        try:
            if not self._started:
                self.directory.mkdir(parents=True, exist_ok=True)
                if self._lock is None:
                    self._lock = lock_directory(self.directory)
                    self._check_directory()  # another run may have started and finished here since the first check
                    self._read_records()
                path = self.directory / SETTINGS
                if not path.exists():
                    write_json(path, self.settings, sort_keys=True)
                self._started = True
            if self._cut:
                path = self.directory / RECORDS
                text = path.read_text(encoding="utf-8", errors="replace")
                if text and not text.endswith("\n"):
                    atomic_write(path, text[: text.rfind("\n") + 1].encode())
                self._cut = False
        except OSError as exc:
            raise CtxextError(f"{self.directory}: cannot write the report there ({exc.strerror or exc})") from None

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def add(self, record: dict) -> None:
        """Log ``record`` (stamped with this store's backend) at once."""
        record = {**record, "backend": self.backend}
        self.begin()
        with open(self.directory / RECORDS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record_key(record)] = record
