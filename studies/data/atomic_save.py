"""Saving a checkpoint or a generated set's cache so that a reader never sees half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from studies.write_faults import named_write_faults


def save_atomically(payload: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: an interrupted save never leaves
    a half file under the real name, and a reader sees the old file or the new one, never a mix.
    A save that fails for lack of space (or a read-only disk) removes its temporary file and raises
    WriteFailed naming `path`."""
    with named_write_faults(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # Through a Python file object: torch's own file writer reports a full disk as a bare
            # stream error, this way the OSError (and its errno) stays in the exception's context.
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
