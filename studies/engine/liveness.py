"""Is the worker of a RUNNING trial still alive? Answered without comparing clocks.

- Server storages (PostgreSQL, MySQL): Optuna's RDB heartbeat. The worker records a heartbeat
  every `heartbeat_s`; the database stamps it with its own time, and a trial whose last beat is
  older than the grace period by the database's clock is failed (Optuna's `fail_stale_trials`).
- File storages (SQLite, journal), which serve processes on one host: a lease the host can check.
  The worker writes its host, boot, process id and process start time onto the trial when it
  claims it; another worker on the same host fails the trial once that process is gone (a reused
  process id has another start time). A lease of another host is never judged. A RUNNING trial
  without a lease (its worker died between claiming and writing it) is failed after `grace_s`
  seconds of this worker's own monotonic clock.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from optuna.trial import TrialState

from studies.store.storage import StorageChoice, StoredStudy

LEASE_ATTR = "lease"
FAILURE_ATTR = "failure"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    """The process's start time since boot (clock ticks), which tells a reused process id apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return started is None or _start_time(pid) in (None, started)


def own_lease() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "started": _start_time(pid)}


class Liveness:
    def __init__(self, choice: StorageChoice, heartbeat_s: float, grace_s: float):
        self.choice, self.heartbeat_s, self.grace_s = choice, heartbeat_s, grace_s
        self._unleased_since: dict[int, float] = {}
        self._here = own_lease()

    @contextlib.contextmanager
    def keep_alive(self, stored: StoredStudy, number: int):
        """Around a claimed trial's whole run: its lease, and on a server its heartbeat thread. On a
        server the first heartbeat is recorded before the lease is written: a trial with a lease
        always has a heartbeat the database can judge, and one without is caught by the grace rule."""
        if self.choice.one_host:
            stored.set_trial_attrs(number, {LEASE_ATTR: self._here})
            yield
            return
        with stored.heartbeats(number, self.heartbeat_s):  # the first one is recorded at once
            stored.set_trial_attrs(number, {LEASE_ATTR: self._here})
            yield

    def fail_dead(self, stored: StoredStudy) -> list[int]:
        """Fail the RUNNING trials whose worker is gone; their numbers."""
        failed = [] if self.choice.one_host else stored.fail_stale()
        now = time.monotonic()
        for trial in stored.trials():
            if trial.state != TrialState.RUNNING:
                continue
            reason = self._verdict(trial, now)
            if reason is not None and stored.fail(trial.number, {FAILURE_ATTR: reason}):  # False: finished meanwhile
                failed.append(trial.number)
        return failed

    def _verdict(self, trial, now: float) -> str | None:
        """Why this RUNNING trial's worker is gone, or None when it may be alive."""
        lease = trial.user_attrs.get(LEASE_ATTR)
        if lease is None:
            first_seen = self._unleased_since.setdefault(trial.number, now)
            if now - first_seen < self.grace_s:
                return None
            return f"stale: claimed but no lease written for {self.grace_s:.0f} s (worker died at start?)"
        if not self.choice.one_host or lease.get("host") != self._here["host"]:
            return None  # a server's heartbeat judges it; another host's process is not ours to judge
        if lease.get("boot") != self._here["boot"]:
            return f"stale: worker process {lease['pid']} ran before this host restarted"
        if _alive(int(lease["pid"]), lease.get("started")):
            return None
        return f"stale: worker process {lease['pid']} on {lease['host']} is gone (killed?)"
