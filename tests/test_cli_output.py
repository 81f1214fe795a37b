"""What a command prints never decides what it does: standard output on a full disk or a closed pipe.

Real subprocesses (``python -m ctxext.cli``), because the interpreter's last flush at exit is where a failed
write to standard output used to print "Exception ignored ...". Each command does its whole work whatever
happens to its output; a full disk is one line and exit status 3, a reader that went away is silent and
status 141 (as SIGPIPE ends a Unix tool).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.cli import READER_GONE, REPORT_LOST

from support.cli_harness import OFFLINE, snapshot

FULL_DISK = (
    "ctxext: error: standard output: No space left on device; the command's work is done, only what it printed was lost"
)


def _run(args: list, sink: str, stderr: str = "pipe") -> subprocess.CompletedProcess:
    """``ctxext ARGS`` with standard output on /dev/full (``full``) or on a pipe whose reader is gone
    (``closed``); standard error captured (``pipe``) or failing the same ways."""
    command = [sys.executable, "-m", "ctxext.cli", *map(str, args)]
    env = {**os.environ, **OFFLINE}
    with contextlib.ExitStack() as stack:
        streams = [_sink(stack, kind) for kind in (sink, stderr)]
        return subprocess.run(command, stdout=streams[0], stderr=streams[1], text=True, env=env)


def _sink(stack: contextlib.ExitStack, kind: str):
    if kind == "pipe":
        return subprocess.PIPE
    if kind == "full":
        return stack.enter_context(open("/dev/full", "w"))
    reader, writer = os.pipe()
    os.close(reader)
    stack.callback(os.close, writer)
    return writer


def _assert_status(result: subprocess.CompletedProcess, sink: str) -> None:
    """Status 3 and the one full-disk line, or status 141 and nothing from ctxext or Python on stderr (the
    progress bars of a command that loads a model may be there)."""
    said = [line for line in result.stderr.splitlines() if "ctxext" in line or "Exception" in line]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    if sink == "full":
        assert (result.returncode, said) == (REPORT_LOST, [FULL_DISK]), result.stderr
    else:
        assert (result.returncode, said) == (READER_GONE, []), result.stderr


SINKS = ["full", "closed"]


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("args", [["methods"], ["--help"], ["--version"]], ids=["methods", "help", "version"])
def test_printing_only_commands(args, sink):
    _assert_status(_run(args, sink), sink)


@pytest.mark.parametrize("sink", SINKS)
def test_patch_is_done_and_unpatch_too(tiny_dir, sink):
    original = (tiny_dir / "config.json").read_bytes()
    _assert_status(_run(["patch", "--method", "yarn", "--factor", "2", tiny_dir], sink), sink)
    assert json.loads((tiny_dir / "config.json").read_text())["ctxext"]["method"] == "yarn"
    _assert_status(_run(["info", tiny_dir], sink), sink)
    _assert_status(_run(["unpatch", tiny_dir], sink), sink)
    assert (tiny_dir / "config.json").read_bytes() == original
    assert not (tiny_dir / "config.json.ctxext-orig").exists()


@pytest.mark.parametrize("sink", SINKS)
def test_a_dry_run_writes_nothing_either_way(tiny_dir, sink):
    before = snapshot(tiny_dir)
    _assert_status(_run(["patch", "--method", "yarn", "--factor", "2", "--dry-run", tiny_dir], sink), sink)
    assert snapshot(tiny_dir) == before


@pytest.mark.parametrize("sink", SINKS)
def test_eval_and_passkey_run_to_their_end(tiny_eval_dir, tmp_path: Path, sink):
    out = tmp_path / "report"
    args = ["--tasks", "passkey", "--lengths", "512", "--samples", "1", "--depths", "0.5", "--out", out]
    _assert_status(_run(["eval", tiny_eval_dir, "--method", "yarn", "--factor", "2", *args], sink), sink)
    assert {"report.md", "report.json", "records.jsonl"} <= {p.name for p in out.iterdir()}
    _assert_status(_run(["passkey", tiny_eval_dir, "--length", "512", "--depths", "0.5"], sink), sink)


def test_a_bad_input_is_still_status_2_with_stdout_gone(tiny_dir):
    """Refusals come before anything is printed: their status and line do not change."""
    before = snapshot(tiny_dir)
    for sink in SINKS:
        result = _run(["patch", "--method", "yarn", "--factor", "0.5", tiny_dir], sink)
        assert result.returncode == 2 and result.stderr.startswith("ctxext: error: factor must be greater than 1")
        assert result.stderr.count("\n") == 1
    assert snapshot(tiny_dir) == before


@pytest.mark.parametrize("sink", SINKS)
def test_standard_error_gone_keeps_the_exit_status(tiny_dir, sink):
    """With standard error failing too, the error line is lost but not the status, and nothing else changes:
    a bad input is still 2 with the files untouched, finished work 0 (or 3 when stdout is full as well)."""
    before = snapshot(tiny_dir)
    assert _run(["patch", "--method", "yarn", "--factor", "0.5", tiny_dir], "pipe", stderr=sink).returncode == 2
    assert _run(["info", tiny_dir / "missing"], "pipe", stderr=sink).returncode == 2
    assert snapshot(tiny_dir) == before
    done = _run(["patch", "--method", "yarn", "--factor", "2", tiny_dir], "pipe", stderr=sink)
    assert done.returncode == 0 and "yarn" in done.stdout
    assert json.loads((tiny_dir / "config.json").read_text())["ctxext"]["method"] == "yarn"
    both = _run(["unpatch", tiny_dir], sink, stderr=sink)
    assert both.returncode == (REPORT_LOST if sink == "full" else READER_GONE)
    assert not (tiny_dir / "config.json.ctxext-orig").exists()
