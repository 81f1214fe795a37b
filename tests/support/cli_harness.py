"""The command-line harness: a fork server that runs ``ctxext`` commands, and checks of their refusals.

Starting Python and importing torch and transformers takes seconds per command, so the guard
tests run their commands through a small fork server (:class:`CliServer`, the session fixture
``cli`` of ``conftest.py``): one process imports ``ctxext.cli`` once, then forks a fresh child
per command, which runs the module as ``python -m`` does (``runpy``) with its own stdout,
stderr, working directory and exit status. ``test_guard_eval.py``'s
``test_the_fork_server_answers_as_python_dash_m_does`` checks that it answers as a real
``python -m ctxext.cli`` does.

``expect_refusal`` runs a command that must be refused and compares the workspace before and
after (``snapshot``: kind, mode and content of every entry); ``assert_refused`` is its check of
one ``ctxext: error:`` line; ``break_weights`` corrupts a model's weights so that a check running
after the model load fails with the load's error instead of its own; ``with_flags`` changes
flags of a command line; ``assert_refused_before_loading`` is the in-process check (the loader
replaced by a failure).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

DRIVER = r"""
import json, os, runpy, sys, time
import ctxext.cli, ctxext.cli.eval, ctxext.eval.runner, ctxext.eval.report, ctxext.recipes.train  # once
import ctxext.openai_server.launch  # fastapi and uvicorn, once
import transformers
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast  # noqa: F401

replies = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)  # only replies on the reply pipe
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command, as `python -m ctxext.cli ARGS` runs it
        code = 1
        try:
            os.chdir(request["cwd"])
            fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd, 0)
            for target, path in ((1, request["stdout"]), (2, request["stderr"])):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, target)
                os.close(fd)
            sys.stdin = open(os.devnull)
            sys.argv = ["ctxext", *request["argv"]]
            sys.modules.pop("ctxext.cli", None)  # as `python -m` finds it: not imported yet
            try:
                runpy.run_module("ctxext.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                import traceback
                traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - start > request["timeout"]:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            rc = None
            break
        time.sleep(0.005)
    replies.write(json.dumps({"rc": rc, "seconds": time.monotonic() - start}) + "\n")
    replies.flush()
"""


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float


class CliServer:
    """Runs ``ctxext`` commands, each in a fresh forked process (see the module docstring)."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.count = 0
        env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=scratch,
        )

    def run(self, *args, cwd: Path | None = None, timeout: float = 300) -> Result:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {
            "argv": [str(a) for a in args],
            "cwd": str(cwd or self.scratch),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, "the fork server died"
        reply = json.loads(reply)
        return Result(reply["rc"], out.read_text(), err.read_text(), reply["seconds"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, and a file's sha256 (a symlink's target)."""
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISREG(info.st_mode):
            found[name] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            found[name] = ("other", stat.S_IMODE(info.st_mode), os.readlink(path) if path.is_symlink() else None)
    return found


def assert_refused(result: Result, message: str) -> None:
    """Exit status 2 and exactly one stderr line, ``ctxext: error: ...`` naming the problem; no traceback."""
    assert result.rc == 2, (result.rc, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n") and "\r" not in result.stderr, result.stderr
    assert result.stderr.startswith("ctxext: error: "), result.stderr
    assert message in result.stderr, (message, result.stderr)


def expect_refusal(cli: CliServer, workspace: Path, args: list[str], message: str, cwd: Path | None = None) -> Result:
    """Run a command that must be refused; the workspace must be byte for byte and mode for mode as it was."""
    args = [str(a).format(ws=workspace) for a in args]
    message = message.format(ws=workspace)
    before = snapshot(workspace)
    result = cli.run(*args, cwd=cwd or workspace)
    assert_refused(result, message)
    assert snapshot(workspace) == before, "the refused command changed, added or removed files"
    return result


def break_weights(model_dir: Path) -> None:
    """A corrupt weights file: loading the model now fails with an error of its own."""
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")


def with_flags(args: list[str], **changes) -> list[str]:
    args = list(args)
    for flag, value in changes.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def assert_refused_before_loading(monkeypatch, capsys, loader, argv: list[str], out, message: str) -> None:
    """``ctxext ARGV`` exits 2 with one 'ctxext: error:' line holding ``message``, without calling
    ``loader.load_model`` and without writing ``out``."""
    from ctxext.cli import main

    monkeypatch.setattr(loader, "load_model", lambda config: pytest.fail("the model was loaded"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxext: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()
