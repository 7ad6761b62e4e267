"""Waiting, in a test, for a worker process to reach a state of its study's trials."""
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial


def wait_for_trials(worker, database: Path, study_name: str, reached: Callable[[list[FrozenTrial]], bool],
                    timeout: float = 120) -> list[FrozenTrial]:
    """Poll the worker's SQLite study until `reached(trials)`; fail if the worker exits first or the
    time runs out. The database is opened only once the worker has made it: opening it here first
    would race the worker's schema creation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert worker.poll() is None, worker.communicate()[1]
        if not database.exists():
            continue
        try:
            trials = optuna.load_study(study_name=study_name, storage=f"sqlite:///{database}").get_trials()
        except Exception:  # the study is not created yet
            continue
        if reached(trials):
            return trials
    raise AssertionError(f"{study_name}: the trials did not reach the awaited state within {timeout:.0f} s")
