"""Where studies are stored, chosen explicitly and said aloud; never switched silently; and the one
place that speaks to Optuna's storages (`StoredStudy`: the engine's and the report's every read and
write of a study, the heartbeat, the cross-process lock).

- `STORAGE=` / `--storage`: `journal:<path>` (or a path ending in .journal: Optuna's
  JournalFileBackend, for several processes on one host), or a SQLAlchemy URL (`sqlite:///...` for
  one worker; `postgresql://...` for workers on several machines).
- nothing given: the profile's file under results/<profile>/ that already exists:
  `studies.db` (SQLite) or `studies.journal`; when neither exists, SQLite for one worker and the
  journal for several. Both existing is an error (which one holds the results?); several workers
  on an existing SQLite file are refused with the `studies migrate` command that copies it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from studies.results_location import prove_writable


class StorageError(ValueError):
    """A storage that cannot be used as asked; the message says what to do instead."""


SQLITE_NAME, JOURNAL_NAME = "studies.db", "studies.journal"


@dataclass(frozen=True)
class StorageChoice:
    url: str
    kind: str  # "sqlite", "journal" or "server"
    path: Path | None  # the file of a sqlite or journal storage
    reason: str  # why this one, as said at start

    @property
    def one_host(self) -> bool:
        """File storages serve processes on one host: their liveness is a lease the host checks."""
        return self.kind in ("sqlite", "journal")

    def describe(self) -> str:
        return f"storage: {redact(self.url)} ({self.reason})"


def parse_url(url: str, reason: str = "given") -> StorageChoice:
    if url.startswith("journal:") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:"))
        return StorageChoice(f"journal:{path}", "journal", path, reason)
    if "://" not in url:
        raise StorageError(f"storage {url!r} is neither a database URL nor journal:<path>")
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite:///")
        return StorageChoice(url, "sqlite", Path(path) if path and path != ":memory:" else None, reason)
    return StorageChoice(url, "server", None, reason)


def choose_storage(url: str | None, directory: Path, workers: int = 1) -> StorageChoice:
    """The storage for a run or report; ValueError (one line) where the choice would be a guess."""
    if url:
        choice = parse_url(url)
        if workers > 1 and choice.kind == "sqlite":
            raise StorageError("SQLite serves one worker at a time; for several workers use a journal:<path> or a "
                             "postgresql:// storage (`python -m studies migrate` copies a SQLite study there)")
        return choice
    sqlite, journal = directory / SQLITE_NAME, directory / JOURNAL_NAME
    if sqlite.exists() and journal.exists():
        raise StorageError(f"both {sqlite} and {journal} exist; say which holds the results with "
                         f"--storage sqlite:///{sqlite} or --storage journal:{journal} (STORAGE= in make)")
    if journal.exists():
        return StorageChoice(f"journal:{journal}", "journal", journal, "found")
    if sqlite.exists():
        if workers > 1:
            raise StorageError(f"{sqlite} holds this profile's studies, and several workers need the journal: run "
                             f"`python -m studies migrate --profile {directory.name}` first (it copies them to "
                             f"{journal}), or run with one worker")
        return StorageChoice(f"sqlite:///{sqlite}", "sqlite", sqlite, "found")
    if workers > 1:
        return StorageChoice(f"journal:{journal}", "journal", journal, f"new; journal for {workers} workers")
    return StorageChoice(f"sqlite:///{sqlite}", "sqlite", sqlite, "new")


def open_storage(choice: StorageChoice | str, heartbeat_s: float | None = None,
                 grace_s: float | None = None, writes: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage; fails in one line. A server storage records heartbeats in the database's
    own time when `heartbeat_s` is given (Optuna's RDB heartbeat), so no worker's clock matters.
    A file storage opened for writing proves its directory takes writes first; `writes=False`
    (a reader of an existing file) leaves that directory untouched."""
    if isinstance(choice, str):
        choice = parse_url(choice)
    if choice.path is not None:
        _check_storage_file(choice, writes)
    if choice.kind == "journal":
        try:
            return JournalStorage(WholeLineJournal(str(choice.path)))
        except OSError as error:  # e.g. a path the file system will not create (journal:/proc/x)
            raise StorageError(f"cannot open storage {redact(choice.url)}: {error.strerror or error}") from None
    url = _with_driver(choice.url)
    heartbeat = {}
    if choice.kind == "server" and heartbeat_s is not None:
        interval = max(1, round(heartbeat_s))
        heartbeat = {"heartbeat_interval": interval, "grace_period": max(interval + 1, round(grace_s or 6 * interval))}
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            # RDBStorage connects and creates its tables here, so an unreachable server fails now.
            with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)
        except Exception as error:  # SQLAlchemy raises many driver-specific types
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            # Two processes opening a new database at once both create its tables; the loser's
            # "already exists" means the schema is now there, so opening again succeeds.
            if _lost_schema_race(message) and attempt + 1 < SCHEMA_RACE_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise StorageError(f"cannot open storage {redact(url)}: {message}") from None


def _check_storage_file(choice: StorageChoice, writes: bool) -> None:
    """A storage file must be a file (or not yet exist) in an existing directory, and that directory
    must take writes when the storage will be written (`writes`)."""
    path = choice.path
    if path.is_dir():
        example = f"journal:{path / JOURNAL_NAME}" if choice.kind == "journal" else f"sqlite:///{path / SQLITE_NAME}"
        raise StorageError(f"cannot open storage {redact(choice.url)}: {path} is a directory; give a file in it, "
                           f"e.g. {example}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StorageError(f"cannot open storage {redact(choice.url)}: {folder} is not a writable directory")
    if not writes:
        return
    try:
        prove_writable(folder, "storage directory")
    except PermissionError as error:
        raise StorageError(f"cannot open storage {redact(choice.url)}: {error}") from None


class WholeLineJournal(JournalFileBackend):
    """Optuna's journal file, where an append that fails part-way (a full disk) is cut back to the
    last whole line. Optuna skips a torn last line when reading, but the next append would continue
    it, and the journal would no longer parse: every stored trial would be lost to a full disk.
    capsbench's processes append under a lock of their own, so the length read before an append is
    still the file's when a failed one is cut back."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = Path(path)
        self.append_lock = self.path.with_name(self.path.name + ".append-lock")

    def append_logs(self, logs: list[dict]) -> None:
        with open(self.append_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            start = self.path.stat().st_size if self.path.exists() else 0
            try:
                super().append_logs(logs)
            except OSError:
                with open(self.path, "r+b") as journal:
                    journal.truncate(start)  # frees space; needs none
                raise


SCHEMA_RACE_ATTEMPTS = 8
# What SQLite, PostgreSQL and Alembic's version table say when another process created the schema first.
SCHEMA_RACE_SIGNS = ("already exists", "duplicate key", "UNIQUE constraint failed")


def _lost_schema_race(message: str) -> bool:
    return any(sign in message for sign in SCHEMA_RACE_SIGNS)


@contextlib.contextmanager
def exclusive(choice: StorageChoice, storage: optuna.storages.BaseStorage, name: str):
    """Holds a lock named `name` across processes sharing the storage: a file lock beside a file
    storage, a PostgreSQL advisory lock on a server. Checking which points are missing and
    enqueuing them happen under it, so two workers never enqueue the same point."""
    if choice.path is not None:
        # Not `<name>.lock`: Optuna's journal backend owns that name for its own lock.
        lock_path = choice.path.with_name(choice.path.name + ".enqueue-lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if choice.url.startswith("postgresql"):
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    raise StorageError(f"several workers on {redact(choice.url)} are not supported; use journal:<path> or postgresql://")


def migrate(source: StorageChoice, destination: StorageChoice) -> list[str]:
    """Copy every study of `source` into `destination` (which must hold none of them), check the
    trial counts, then move a source file aside (`<name>.migrated`) so the default choice is
    unambiguous. Nothing is deleted."""
    if source.url == destination.url:
        raise StorageError("source and destination are the same storage")
    origin = open_storage(source)
    names = optuna.get_all_study_names(origin)
    if not names:
        raise StorageError(f"{redact(source.url)} holds no studies")
    target = open_storage(destination)
    clash = sorted(set(names) & set(optuna.get_all_study_names(target)))
    if clash:
        raise StorageError(f"{redact(destination.url)} already holds {', '.join(clash)}; nothing copied")
    for name in names:
        optuna.copy_study(from_study_name=name, from_storage=origin, to_storage=target)
        copied = len(optuna.load_study(study_name=name, storage=target).get_trials(deepcopy=False))
        original = len(optuna.load_study(study_name=name, storage=origin).get_trials(deepcopy=False))
        if copied != original:
            raise RuntimeError(f"migration of {name} copied {copied} of {original} trials; source left in place")
    if source.path is not None:
        source.path.rename(source.path.with_name(source.path.name + ".migrated"))
    return names


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


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


class StoredStudy:
    """One study in its storage, through Optuna's storage interface: trials are named by their
    number, never handed out as live `optuna.Trial` objects (which Optuna builds itself inside
    `study.optimize`/`ask`), so a trial claimed by a state change is read back as a `FrozenTrial`."""

    def __init__(self, choice: StorageChoice, storage: optuna.storages.BaseStorage, study: optuna.Study):
        self.choice, self.storage, self.study = choice, storage, study
        self.name = study.study_name
        self._id = storage.get_study_id_from_name(self.name)

    @classmethod
    def open(cls, choice: StorageChoice, name: str, heartbeat_s: float | None = None,
             grace_s: float | None = None) -> "StoredStudy":
        """The study `name`, created where it is not stored yet."""
        storage = open_storage(choice, heartbeat_s, grace_s)
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
        return cls(choice, storage, study)

    @classmethod
    def read(cls, choice: StorageChoice, name: str) -> "StoredStudy | None":
        """The study `name` where it is stored, else None; creates nothing (no file, no study) and
        writes nothing, so a storage on a read-only disk can be read."""
        if choice.path is not None and not choice.path.exists():
            return None
        storage = open_storage(choice, writes=False)
        if name not in {s.study_name for s in storage.get_all_studies()}:
            return None
        return cls(choice, storage, optuna.load_study(study_name=name, storage=storage))

    # --- reading ---------------------------------------------------------------------------------

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self._id, deepcopy=False)

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._trial_id(number))

    def attrs(self) -> dict[str, Any]:
        """The study's user attributes, read from the storage now (another worker may have set one)."""
        return self.storage.get_study_user_attrs(self._id)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._id, number)

    # --- writing ---------------------------------------------------------------------------------

    def set_attr(self, name: str, value: Any) -> None:
        self.study.set_user_attr(name, value)

    def enqueue(self, user_attrs: dict[str, Any]) -> None:
        self.study.enqueue_trial({}, user_attrs=user_attrs)

    def claim(self, number: int) -> bool:
        """WAITING -> RUNNING for this worker (atomic in every Optuna storage); False where another
        worker took the trial first."""
        try:
            return bool(self.storage.set_trial_state_values(self._trial_id(number), TrialState.RUNNING))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # another worker took it and finished it meanwhile

    def set_trial_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        trial_id = self._trial_id(number)
        for name, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, name, value)

    def fail(self, number: int, attrs: dict[str, Any]) -> bool:
        """Record `attrs` and fail the trial; False where it had finished meanwhile."""
        try:
            self.set_trial_attrs(number, attrs)
            return bool(self.storage.set_trial_state_values(self._trial_id(number), TrialState.FAIL))
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False

    def complete(self, number: int, value: float, attrs: dict[str, Any]) -> bool:
        """Record `attrs` and the objective on a trial still RUNNING; False where another worker
        failed it meanwhile."""
        try:
            self.set_trial_attrs(number, attrs)
            self.storage.set_trial_state_values(self._trial_id(number), TrialState.COMPLETE, [value])
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def add_completed(self, value: float, user_attrs: dict[str, Any]) -> None:
        self.study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value, user_attrs=user_attrs))

    def sibling(self, name: str, direction: str, sampler: optuna.samplers.BaseSampler,
                pruner: optuna.pruners.BasePruner) -> optuna.Study:
        """Another study in the same storage (nuisance tuning asks and tells its trials itself)."""
        return optuna.create_study(study_name=name, storage=self.storage, direction=direction,
                                   load_if_exists=True, sampler=sampler, pruner=pruner)

    # --- liveness and locking --------------------------------------------------------------------

    @contextlib.contextmanager
    def heartbeats(self, number: int, interval_s: float):
        """Optuna's RDB heartbeat (server storages; stamped with the database's own time) for a trial:
        one recorded now, then one every `interval_s` from a thread until the block ends."""
        trial_id = self._trial_id(number)
        self.storage.record_heartbeat(trial_id)
        stop = threading.Event()

        def beat():
            while not stop.wait(interval_s):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a transient database error: beat again next time
                    pass

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_stale(self) -> list[int]:
        """Optuna's own judgement of server trials whose heartbeat stopped; the numbers it failed."""
        running = (TrialState.RUNNING,)
        before = {t.number for t in self.study.get_trials(deepcopy=False, states=running)}
        with warnings.catch_warnings():  # fail_stale_trials is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        after = {t.number for t in self.study.get_trials(deepcopy=False, states=running)}
        return sorted(before - after)

    def lock(self):
        """The cross-process lock of this study (`exclusive`)."""
        return exclusive(self.choice, self.storage, self.name)
