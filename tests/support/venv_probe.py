"""Running a probe script in another venv (a real engine's, or one with another transformers): the script prints
one JSON line per path it was given, carrying that ``path``; the test gets the records by path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def read_probe(python: Path, script: Path, paths: list[Path], *args: str, env: dict | None = None) -> dict[str, dict]:
    """``python script *args *paths`` in the first path's folder -> {path: record}; the test fails with the probe's
    output when it exits with an error or leaves a path out."""
    run = subprocess.run(
        [str(python), str(script), *args, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=paths[0].parent,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[record["path"]] = record
    assert len(found) == len(paths), run.stdout[-2000:] + run.stderr[-2000:]
    return found
