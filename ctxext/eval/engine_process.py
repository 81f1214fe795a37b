"""ctxext's side of the engine worker (``engine_worker.py``): start it with the engine's Python, ask, read answers.

The worker's stderr (the engine's logs) goes to a file in the backend's temporary directory: an engine that dies
is reported in one line with the last line it logged.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from ..errors import CtxextError

WORKER = Path(__file__).with_name("engine_worker.py")


class EngineProcess:
    """One worker process holding one loaded model; ``load`` answers the engine's version."""

    def __init__(self, python: str, engine: str, log: Path):
        self.engine, self.log = engine, log
        self.busy = False  # a request is out and its answer not read (an interrupted run)
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )

    def ask(self, request: dict) -> dict:
        """The worker's answer to ``request``; its error (or its death) is a CtxextError."""
        self.busy = True
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        self.busy = False
        if not line:
            self.process.wait()
            raise CtxextError(
                f"the {self.engine} worker stopped (exit status {self.process.returncode}): {self._last_logged()}"
            )
        answer = json.loads(line)
        if "error" in answer:
            cause = self._logged_error() if request["op"] == "load" else None
            said = f" (its log: {cause})" if cause and cause not in answer["error"] else ""
            raise CtxextError(f"{self.engine}: {answer['error']}{said}")
        return answer

    def _lines(self) -> list[str]:
        return [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]

    def _last_logged(self) -> str:
        lines = self._lines()
        return lines[-1][:300] if lines else "it logged nothing"

    def _logged_error(self) -> str | None:
        """The last exception line the engine logged: an engine that fails in a subprocess of its own (vLLM's
        engine core) raises a generic error and logs the cause."""
        found = [line for line in self._lines() if re.search(r"\w+(Error|Exception): ", line)]
        return re.sub(r"^.*?(\w+(Error|Exception): )", r"\1", found[-1])[:300] if found else None

    def close(self) -> None:
        """Ask the worker to quit (it frees the model) and wait for it; one still working on an interrupted
        request is killed."""
        if self.busy and self.process.poll() is None:
            self.process.kill()
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
