"""The ``ctxext`` command line: one module per subcommand, each parsing its flags, making one library call, printing.

Every bad input ends with one ``ctxext: error: ...`` line and exit status 2, files untouched; Ctrl-C or SIGTERM
end with one line and exit status 130. What a command prints never decides what it does: a failed write to
standard output is remembered and the command goes on to its end; then a full disk or a failing device is one line
and exit status 3 (the work is done, its report lost), and a reader that went away (``ctxext methods | head -1``)
ends the command silently with status 141, as SIGPIPE ends a Unix tool. Standard error is guarded the same way:
when it cannot be written (``2>/dev/full``, a closed pipe) the error line is lost but the exit status is kept.

Only the chosen subcommand's flags are built (a method-parameter flag needs the method registry, which loads
torch), so ``ctxext --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import typing

from ..errors import CtxextError, one_line
from ..version import __version__

# what a command whose work is done, but whose report could not be written, exits with
REPORT_LOST = 3
READER_GONE = 128 + signal.SIGPIPE

# subcommand -> its module in this package; the order is the order of ``ctxext --help``
COMMANDS = ("patch", "unpatch", "methods", "info", "passkey", "probe", "eval", "tune", "finetune", "serve")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other ctxext error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"ctxext: error: {message} (see '{self.prog} --help')\n")


def _module(command: str):
    return importlib.import_module(f"{__name__}.{command}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, every other subcommand is listed with its help but gets no flags."""
    parser = _Parser(prog="ctxext", description="Extend the context window of RoPE language models.")
    parser.add_argument("--version", action="version", version=f"ctxext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        module = _module(command)
        p = commands.add_parser(command, help=module.HELP, description=module.HELP)
        if only is None or only == command:
            module.add_arguments(p)
    return parser


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


class _Output:
    """Standard output or error for a command: the first failed write is kept in ``error`` and later output
    dropped, so that a full disk or a closed pipe never stops the work half-way."""

    def __init__(self, stream):
        self.stream = stream
        self.error = None if stream is not None else OSError(errno.EBADF, "closed")

    def write(self, text: str) -> int:
        self._attempt(self.stream.write if self.error is None else None, text)
        return len(text)

    def flush(self) -> None:
        self._attempt(self.stream.flush if self.error is None else None)

    def _attempt(self, call, *args) -> None:
        if call is None:
            return
        try:
            call(*args)
        except OSError as exc:
            self.error = exc
            self._silence()

    def _silence(self) -> None:
        """Point the file descriptor at /dev/null, so that the interpreter's last flush of what is still buffered
        cannot fail again ("Exception ignored ...")."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _finish(stdout: _Output, status: int) -> int:
    """The exit status of a command that returned ``status``, once what it printed is flushed."""
    stdout.flush()
    if stdout.error is None:
        return status
    if isinstance(stdout.error, BrokenPipeError):
        return READER_GONE
    print(
        f"ctxext: error: standard output: {stdout.error.strerror or stdout.error}; the command's work is done, "
        "only what it printed was lost",
        file=sys.stderr,
    )
    return REPORT_LOST


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # so that SIGTERM cleans up staged writes like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    """The command line. The error boundary is set up first, before any heavy import: bad input is one
    ``ctxext: error:`` line (status 2), an interruption one line (status 130), and an internal error one line
    too, with its traceback only under ``CTXEXT_DEBUG=1``; a failed write to standard output is status 3 or 141
    (see the module docstring)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    stdout = sys.stdout = _Output(sys.stdout)
    stderr = sys.stderr = _Output(sys.stderr)
    try:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # config warnings would bury our one-line errors
        if "transformers" in sys.modules:  # already imported (by the caller): the variable is read only at import
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(only=_chosen(argv) or "").parse_args(argv)
        return _finish(stdout, _module(args.command).run(args))
    except SystemExit as exc:  # argparse: --help and --version print and exit 0, a usage error exits 2
        if exc.code:
            raise
        return _finish(stdout, 0)
    except CtxextError as exc:
        print(f"ctxext: error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ctxext: error: {where}{exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("ctxext: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ctxext's or a library's: one line unless asked for the traceback
        if os.environ.get("CTXEXT_DEBUG"):
            raise
        print(
            f"ctxext: error: internal error ({type(exc).__name__}: {one_line(exc)}); run with CTXEXT_DEBUG=1 "
            "for the traceback",
            file=sys.stderr,
        )
        return 1
    finally:
        sys.stdout, sys.stderr = stdout.stream, stderr.stream
        signal.signal(signal.SIGTERM, previous)
    return 2
