"""Where studies are stored: SQLite by default, any Optuna storage URL otherwise.

- nothing given: `sqlite:///results/<profile>/studies.db` (embedded, nothing to start), or
  the journal file `results/<profile>/studies.journal` when several workers run or when that
  file already exists (so later runs and reports find the trials the workers stored);
- `journal:<path>` (or a path ending in .journal): Optuna's JournalFileBackend, for several
  processes on one machine;
- any SQLAlchemy URL (`postgresql://...`, `mysql://...`, `sqlite:///...`): RDB storage,
  PostgreSQL being the documented way for several machines.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

REPO_ROOT = Path(__file__).resolve().parents[2]


def results_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    base = Path(root) if root is not None else Path(os.environ.get("CAPSBENCH_RESULTS", REPO_ROOT / "results"))
    return base / profile


def ensure_writable(directory: Path) -> Path:
    """Create `directory` and prove it is writable, or fail with one clear line."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"results directory {directory} is not writable: {error.strerror or error}") from None
    return directory


def default_url(directory: Path, workers: int = 1) -> str:
    journal = directory / "studies.journal"
    if workers > 1 or journal.exists():
        return f"journal:{journal}"
    return f"sqlite:///{directory / 'studies.db'}"


def open_storage(url: str | None, directory: Path, workers: int = 1) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url` (None: the profile's default); fails in one line."""
    url = url or default_url(ensure_writable(directory), workers)
    if url.startswith("journal:") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:"))
        ensure_writable(path.parent if str(path.parent) else Path("."))
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage {url!r} is neither a database URL nor journal:<path>")
    url = _with_driver(url)
    try:
        # RDBStorage connects and creates its tables here, so an unreachable server fails now.
        return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as error:  # SQLAlchemy raises many driver-specific types
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot open storage {_redact(url)}: {message}") from None


def _with_driver(url: str) -> str:
    """A bare postgresql:// URL names the installed driver: SQLAlchemy 2.1 defaults to psycopg 3,
    2.0 to psycopg2, and the project installs psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        # Fail fast on an unreachable server instead of the driver's long default.
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Concurrent readers/writers on one machine wait for the lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {}


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url
