"""Logging for workflow scripts: everything a stage prints goes to the rule's log file; progress and the reason of a
failure also go to the console Snakemake runs in."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import TextIO

_console: TextIO | None = None


def console() -> TextIO:
    """Where progress meant for a person goes: the console a workflow script started on (see `log_to_file`), else
    standard error."""
    return _console or sys.stderr


def log_to_file(path: str | Path) -> logging.Logger:
    """Sends this process's output, Python's and that of compilers or libraries it starts, to the log at `path`,
    keeping the console for `console()`. An uncaught exception's traceback goes to the log and its message, with
    the log's path, to the console."""
    global _console
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if _console is None:
        _console = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    # Appending keeps the log of a run that was killed and resumed (training) whole.
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    for fd in (1, 2):  # file descriptors, so that child processes (ninja, the compiler, torchrun) log there too
        os.dup2(log_fd, fd)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )

    def report(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        traceback.print_exception(kind, error, tb, file=sys.stderr)
        print(f"{kind.__name__}: {error}\n(traceback in {path})", file=_console)

    sys.excepthook = report
    return logging.getLogger("pianomuse")
