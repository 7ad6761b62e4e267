"""Where a run writes besides its storage (the results directory of a profile), and the proof,
before anything is trained, that a directory takes writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def results_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    base = Path(root) if root is not None else Path(os.environ.get("CAPSBENCH_RESULTS", REPO_ROOT / "results"))
    return base / profile


def ensure_writable(directory: Path, what: str = "results directory") -> Path:
    """Create `directory` and prove it can be written, or fail with one clear line naming `what`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"{what} {directory} is not writable: {error.strerror or error}") from None
    return prove_writable(directory, what)


def prove_writable(directory: Path, what: str) -> Path:
    """Write, sync and remove a small file in `directory` (which must exist): a read-only file system,
    missing permissions or a disk already full fail here, in one line, rather than after training."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-") as probe:
            # A byte really written: on a full disk creating an empty file still succeeds.
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise PermissionError(f"{what} {directory} is not writable: {error.strerror or error}") from None
    return directory
