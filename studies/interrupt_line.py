"""Ctrl-C says one line, whenever it comes, and exits with 130.

Before a command has started anything (while torch, scipy and the rest are being imported), a
KeyboardInterrupt would land inside whichever module was half imported and surface as its
traceback, or as another error altogether (a RecursionError from numpy's lazy attributes). Nothing
is stored yet then, so the entry points leave at once instead (`guard_start_up`); the command's
own handlers (studies/training/stop.py) take over once it runs, and record what was interrupted.
Worker processes a run starts stay silent: their parent got the same Ctrl-C and says the line."""
from __future__ import annotations

import os
import signal
import sys

EXIT_INTERRUPTED = 130
# Set on the worker processes `studies run --workers N` starts.
WORKER_ENV = "CAPSBENCH_WORKER"


def say(line: str) -> None:
    """`line` on stderr, unless this process is a worker whose parent says it."""
    if not os.environ.get(WORKER_ENV):
        print(line, file=sys.stderr)


def _leave_at_start_up(signum, frame) -> None:
    if not os.environ.get(WORKER_ENV):
        os.write(2, b"interrupted before anything started\n")
    os._exit(EXIT_INTERRUPTED)  # no exception: it would surface inside a half-imported module


def guard_start_up() -> None:
    """First thing in an entry point, before the heavy imports."""
    signal.signal(signal.SIGINT, _leave_at_start_up)


def ignore_from_now() -> None:
    """After the command has finished and said so: a late Ctrl-C changes nothing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def after_command(handler):
    """The SIGINT handler to put back when a command ends: nothing, where it was the start-up guard
    (the command has finished and said so; a late Ctrl-C must not claim nothing started)."""
    return signal.SIG_IGN if handler is _leave_at_start_up else handler
