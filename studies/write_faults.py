"""Writes that fail because of the disk, not the program: no space left, a quota, a read-only file
system. They end a run in one line naming the path and the cause, never a traceback.

Libraries report them in their own words: torch's file writer as a RuntimeError whose context is
the OSError, SQLite as "database or disk is full" under Optuna's StorageInternalError (whose own
message blames "invalid data"). `disk_fault` finds the cause in the exception's chain, so each
place that writes can name what it was writing.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

# The causes that are the disk's, whatever was being written.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
# SQLite's words for the same causes (its exceptions carry no errno).
SQLITE_MESSAGES = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS}


class WriteFailed(Exception):
    """Something could not be written for lack of space (or a read-only file system): the message
    names the path, the cause and what to do."""

    def __init__(self, path: object, cause: OSError, advice: str = "") -> None:
        self.path, self.cause, self.advice = path, cause, advice
        strerror = cause.strerror or os.strerror(cause.errno or 0)
        super().__init__(f"cannot write {path}: {strerror}" + (f"; {advice}" if advice else ""))

    def advising(self, advice: str) -> WriteFailed:
        """The same failure with what the caller knows to do about it."""
        return WriteFailed(self.path, self.cause, advice)


# Exceptions that wrap a write's failure in their own words, the failure left as their context:
# torch's file writer (RuntimeError), Optuna's storages (StorageInternalError), SQLAlchemy's
# (OperationalError, with the driver's error as `orig`). Any other exception is followed through
# its explicit cause only, so a bug raised while a disk error was being handled stays a bug.
WRAPPERS = ("RuntimeError", "StorageInternalError", "OperationalError")


def disk_fault(error: BaseException) -> OSError | None:
    """The disk's OSError behind `error` (its causes, the context of a library's wrapper, a database
    driver's original error), or None when the failure is not the disk's."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, WriteFailed):
            return current.cause
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current
        for message, number in SQLITE_MESSAGES.items():
            if type(current).__name__ == "OperationalError" and message in str(current):
                return OSError(number, os.strerror(number))
        pending.append(current.__cause__)
        if type(current).__name__ in WRAPPERS:
            pending += [current.__context__, getattr(current, "orig", None)]
    return None


@contextlib.contextmanager
def named_write_faults(path: object, advice: str = "") -> Iterator[None]:
    """Inside, a write that fails because of the disk raises WriteFailed naming `path` (what the
    caller was writing, not a temporary file beside it); a WriteFailed raised further in keeps its
    own path."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as error:
        cause = disk_fault(error)
        if cause is None:
            raise
        raise WriteFailed(path, cause, advice) from error
