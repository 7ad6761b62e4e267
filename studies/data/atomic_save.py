"""Saving a checkpoint or a generated set's cache so that a reader never sees half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from studies.write_faults import named_write_faults


def _write_atomically(path: Path, write) -> None:
    """`write(stream)` into a temporary file beside `path`, synced, then renamed over it."""
    with named_write_faults(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def write_text_atomically(path: Path, text: str) -> None:
    """A text file written whole or not at all (as `save_atomically`)."""
    _write_atomically(Path(path), lambda stream: stream.write(text.encode()))


def save_atomically(payload: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: an interrupted save never leaves
    a half file under the real name, and a reader sees the old file or the new one, never a mix.
    A save that fails for lack of space (or a read-only disk) removes its temporary file and raises
    WriteFailed naming `path`."""
    # Through a Python file object: torch's own file writer reports a full disk as a bare stream
    # error, this way the OSError (and its errno) stays in the exception's context.
    _write_atomically(path, lambda stream: torch.save(payload, stream))
