"""Report files appear whole or not at all: they are written in a staging directory inside the
results directory, then renamed into place (a rename needs no space and never leaves half a file).
A report that fails part-way, a full disk included, leaves the previous files as they were."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from studies.write_faults import WriteFailed, disk_fault


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A directory to write the report in; its files replace those in `out` when the block succeeds.
    On any error the staging directory is removed; a full or read-only disk is named in one line."""
    try:
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".report-"))
        try:
            yield staging
            for path in sorted(staging.iterdir()):
                os.replace(path, out / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception as error:
        cause = disk_fault(error)
        if cause is None:
            raise
        # Named by where the report goes: the staging file the OSError names is gone.
        raise WriteFailed(f"the report in {out}", cause, "the previous report files are left as they were; once "
                          "the disk has room, `make report` rebuilds them") from error
