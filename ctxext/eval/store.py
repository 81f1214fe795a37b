"""The run directory's append-only record log, which is what makes a run resumable.

Every finished unit of work (one sample of one task at one length for one method) is
appended to ``records.jsonl`` as one JSON line and flushed at once; a rerun with the same
``--out`` skips the keys already there. ``run.json`` keeps the settings the records depend
on (model, factor, seed, ...) so that a rerun with other settings is refused rather than
mixed in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CtxextError

RECORDS = "records.jsonl"
SETTINGS = "run.json"


def record_key(record: dict) -> tuple:
    return record["method"], record["task"], record["length"], record["sample"]


class RecordStore:
    def __init__(self, directory: Path, settings: dict):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".ctxext-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise CtxextError(f"{self.directory}: cannot write the report there ({exc.strerror or exc})") from None
        settings_path = self.directory / SETTINGS
        if settings_path.exists():
            saved = json.loads(settings_path.read_text())
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            if changed:
                raise CtxextError(f"{self.directory} holds a run with other settings ({', '.join(changed)}); "
                                  "use another --out directory")
        else:
            settings_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        self.records: dict[tuple, dict] = {}
        path = self.directory / RECORDS
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # the last line was cut short by an interruption
                text = text[: text.rfind("\n") + 1]
                path.write_text(text, encoding="utf-8")
            for line in text.splitlines():
                record = json.loads(line)
                self.records[record_key(record)] = record

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def add(self, record: dict) -> None:
        with open(self.directory / RECORDS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record_key(record)] = record
