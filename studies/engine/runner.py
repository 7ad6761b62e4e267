"""Runs a study spec under Optuna: one trial per grid point x seed, each trained once.

The grid is enqueued (`enqueue_trial`) and workers claim WAITING trials one at a time, so
any number of worker processes, on one machine or many, can share a study. A trial is
done when it is COMPLETE; a worker that dies leaves its trial RUNNING, and the heartbeat
below lets any later worker notice it (no beat for `grace_s`), fail it and retrain it.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from studies.engine.storage import open_storage, results_dir
from studies.engine.tasks import TASKS, TrainHooks, preflight
from studies.spec.study import Point, StudySpec
from studies.training.train import Diverged, train

optuna.logging.set_verbosity(optuna.logging.WARNING)

POINT_ATTR = "point"
# The point's values (model, scientific parameters, seed) as a dict: the trial's coordinates. They
# are not Optuna parameters, whose fixed categorical choices would refuse a spec that grows.
VALUES_ATTR = "values"
# A hash of everything the result depends on besides the point (the whole training configuration,
# the kind's settings, the robustness set): trials of an older budget keep their results but are
# superseded, never mixed into a table.
IDENTITY_ATTR = "identity"
FAILURE_ATTR = "failure"
HEARTBEAT_ATTR = "heartbeat"
MAX_CRASH_RETRIES = 3


@dataclass
class RunOptions:
    profile: str = "quick"
    storage: str | None = None
    results_root: str | None = None
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True
    heartbeat_s: float = 10.0
    grace_s: float = 60.0
    workers: int = 1

    @property
    def results(self):
        return results_dir(self.profile, self.results_root)


def study_name(spec: StudySpec, profile: str) -> str:
    return f"{spec.name}.{spec.dataset}.{profile}"


def open_study(spec: StudySpec, options: RunOptions) -> optuna.Study:
    storage = open_storage(options.storage, options.results, options.workers)
    study = optuna.create_study(
        study_name=study_name(spec, options.profile), storage=storage, direction="minimize", load_if_exists=True
    )
    for key, value in {"spec": spec.name, "title": spec.title, "kind": spec.kind,
                       "dataset": spec.dataset, "profile": options.profile}.items():
        study.set_user_attr(key, value)
    return study


def point_values(point: Point) -> dict[str, Any]:
    return {"model": point.model, **dict(point.values), "seed": point.seed}


def identity_hash(config: dict[str, Any], task_identity: dict[str, Any]) -> str:
    """Everything a trial's result depends on but the device it ran on and where files are."""
    run_independent = {"device", "data_root", "progress"}
    payload = {"config": {k: v for k, v in config.items() if k not in run_independent}, "task": task_identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_terminal_failure(trial: optuna.trial.FrozenTrial) -> bool:
    return str(trial.user_attrs.get(FAILURE_ATTR, "")).startswith("diverged")


def point_states(trials: list[optuna.trial.FrozenTrial], identities: dict[str, str]) -> dict[str, str]:
    """Per point key: done, failed (terminal), pending (waiting/running) or retry. Only trials of
    the point's current identity count; `identities` maps each point key to it."""
    by_point: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for trial in trials:
        key = trial.user_attrs.get(POINT_ATTR)
        if key in identities and trial.user_attrs.get(IDENTITY_ATTR) == identities[key]:
            by_point[key].append(trial)
    states = {}
    for key, group in by_point.items():
        if any(t.state == TrialState.COMPLETE for t in group):
            states[key] = "done"
        elif any(t.state == TrialState.FAIL and _is_terminal_failure(t) for t in group):
            states[key] = "failed"
        elif any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in group):
            states[key] = "pending"
        elif sum(t.state == TrialState.FAIL for t in group) >= MAX_CRASH_RETRIES:
            states[key] = "failed"
        else:
            states[key] = "retry"
    return states


def fail_stale_trials(study: optuna.Study, grace_s: float) -> list[int]:
    """Mark RUNNING trials whose worker stopped beating as FAIL; returns their numbers."""
    storage, now, failed = study._storage, time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.user_attrs.get(HEARTBEAT_ATTR)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()
        if last is not None and now - last > grace_s:
            trial_id = trial._trial_id
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, f"stale: no heartbeat for {now - last:.0f} s (worker killed?)")
            try:
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                failed.append(trial.number)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # finished meanwhile
    return failed


def claim_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial to RUNNING for this worker."""
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                return optuna.trial.Trial(study, trial._trial_id)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker took it
    return None


class Heartbeat:
    """Writes the time onto a RUNNING trial every `interval` s from a background thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float):
        self._storage, self._trial_id, self._interval = study._storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._storage.set_trial_user_attr(self._trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # a finished trial or a transient storage error: try again later
                pass
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _superseded(study: optuna.Study, trial: optuna.Trial, key: str, identity: str) -> bool:
    """Another trial of the same point and identity is complete, or running with a lower number.

    Two workers can enqueue the same missing point at once; the lowest-numbered live
    trial wins and the others stand down, so every point trains once."""
    for other in study.get_trials(deepcopy=False):
        if (other.number == trial.number or other.user_attrs.get(POINT_ATTR) != key
                or other.user_attrs.get(IDENTITY_ATTR) != identity):
            continue
        if other.state == TrialState.COMPLETE:
            return True
        if other.state == TrialState.RUNNING and other.number < trial.number:
            return True
    return False


class StudyRunner:
    def __init__(self, spec: StudySpec, options: RunOptions):
        self.spec, self.options = spec, options
        self.profile = spec.profile(options.profile)
        self.points = {p.key: p for p in spec.points(options.profile)}
        first = next(iter(self.points.values()))
        task_identity = preflight(spec, self.profile, self._config(first))
        self.configs = {key: self._config(point) for key, point in self.points.items()}
        self.identities = {key: identity_hash(config.to_dict(), task_identity) for key, config in self.configs.items()}
        self.study = open_study(spec, options)

    def states(self) -> dict[str, str]:
        return point_states(self.study.get_trials(deepcopy=False), self.identities)

    def missing(self) -> list[Point]:
        states = self.states()
        return [p for key, p in self.points.items() if states.get(key) in (None, "retry")]

    def counts(self) -> dict[str, int]:
        states = self.states()
        counts: dict[str, int] = defaultdict(int)
        for key in self.points:
            counts[states.get(key, "missing")] += 1
        return counts

    def run(self) -> dict[str, int]:
        """Train every missing point; returns the final point counts by state."""
        bar = tqdm(total=len(self.points), desc=f"{self.spec.name} [{self.options.profile}]", unit="trial",
                   disable=not self.options.progress)
        waited = False
        while True:
            fail_stale_trials(self.study, self.options.grace_s)
            for point in self.missing():
                self.study.enqueue_trial({}, user_attrs={
                    POINT_ATTR: point.key, VALUES_ATTR: point_values(point), IDENTITY_ATTR: self.identities[point.key],
                })
            counts = self.counts()
            bar.n = counts["done"] + counts["failed"]
            bar.refresh()
            trial = claim_waiting(self.study)
            if trial is not None:
                waited = False
                self._run_trial(trial)
                continue
            if counts["pending"] == 0:
                break
            if not waited:
                tqdm.write(f"waiting for {counts['pending']} trial(s) of other workers "
                           f"(a silent one is retried after {self.options.grace_s:.0f} s)")
                waited = True
            time.sleep(min(self.options.heartbeat_s, 5.0))
        bar.close()
        return dict(self.counts())

    def _run_trial(self, trial: optuna.Trial) -> None:
        key = trial.user_attrs.get(POINT_ATTR)
        identity = trial.user_attrs.get(IDENTITY_ATTR)
        point = self.points.get(key)
        if point is None or identity != self.identities.get(key) or _superseded(self.study, trial, key, identity):
            trial.set_user_attr(FAILURE_ATTR, "superseded: this point is trained by another trial")
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        with Heartbeat(self.study, trial._trial_id, self.options.heartbeat_s):
            nuisance = self._tune_nuisance(point)
            if nuisance:
                trial.set_user_attr("nuisance", nuisance)
            config = self._config(point, nuisance)
            trial.set_user_attr("config", config.to_dict())
            started = time.time()
            checkpoint = self._checkpoint_path(key, identity)
            if checkpoint.exists():
                tqdm.write(f"resuming {key} from its last checkpoint")
            try:
                outcome = TASKS[self.spec.kind](self.spec, self.profile, config, TrainHooks(checkpoint=checkpoint))
            except Diverged as error:
                trial.set_user_attr(FAILURE_ATTR, f"diverged: {error}")
                self.study.tell(trial, state=TrialState.FAIL)
                checkpoint.unlink(missing_ok=True)
                tqdm.write(f"FAILED {key}: diverged: {error}")
                return
            except BaseException as error:  # recorded, then raised: a bug must stay visible
                trial.set_user_attr(FAILURE_ATTR, f"error: {type(error).__name__}: {error}"[:500])
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            trial.set_user_attr("metrics", outcome.metrics)
            if outcome.rows:
                trial.set_user_attr("rows", json.dumps(outcome.rows))
            trial.set_user_attr("wall_seconds", time.time() - started)
        self.study.tell(trial, outcome.objective)
        checkpoint.unlink(missing_ok=True)
        tqdm.write(f"done {key}: test error {100 * outcome.metrics['test_error']:.2f}% "
                   f"in {time.time() - started:.0f} s")

    def _checkpoint_path(self, key: str, identity: str):
        digest = hashlib.sha1(f"{key}|{identity}".encode()).hexdigest()[:16]
        return self.options.results / "checkpoints" / self.study.study_name / f"{digest}.pt"

    def _config(self, point: Point, overrides: dict[str, Any] | None = None):
        return self.spec.train_config(
            point, self.options.profile, overrides, device=self.options.device,
            data_root=self.options.data_root, progress=self.options.progress,
        )

    def _tune_nuisance(self, point: Point) -> dict[str, float]:
        """Best nuisance values for the point's grid configuration (shared by its seeds).

        A sibling study per configuration, TPE with MedianPruner on the per-epoch validation
        accuracy of the profile's first seed; workers share its trial budget."""
        profile = self.profile
        if not self.spec.nuisance or profile.nuisance_trials == 0:
            return {}
        tuning = optuna.create_study(
            study_name=f"{self.study.study_name}.nuisance.{point.config_key}",
            storage=self.study._storage, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=0),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        )
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        while len(tuning.get_trials(deepcopy=False, states=finished)) < profile.nuisance_trials:
            trial = tuning.ask()
            values = {n.name: trial.suggest_float(n.name, n.low, n.high, log=n.log) for n in self.spec.nuisance}

            def report(record, model, trial=trial):
                trial.report(record["val_accuracy"], record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned()

            try:
                result = train(self._config(replace(point, seed=profile.seeds[0]), values), on_epoch=report)
            except optuna.TrialPruned:
                tuning.tell(trial, state=TrialState.PRUNED)
                continue
            except Diverged:
                tuning.tell(trial, state=TrialState.FAIL)
                continue
            tuning.tell(trial, result.history[-1]["val_accuracy"])
        completed = tuning.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return tuning.best_params if completed else {}


def run_study(spec: StudySpec, options: RunOptions) -> dict[str, int]:
    return StudyRunner(spec, options).run()
