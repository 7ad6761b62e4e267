"""Runs a study spec under Optuna: one trial per grid point x seed, each trained exactly once.

Workers (processes on one host sharing a file storage, or anywhere sharing a PostgreSQL
database) loop: fail the trials whose worker is gone (`liveness`), then, under a lock on the
storage, enqueue the points that are missing, then claim one WAITING trial (an atomic state change
in every Optuna storage) and run it. A finished trial is recorded under the same lock, so a point
never gets two completed trials. A point is identified by its key (model, scientific values,
seed) and by a hash of everything its result depends on, so a spec that grows trains only what is
new and a changed budget retrains instead of mixing results.

Failures: a divergence is final; a crash, a lost worker or running out of memory uses one of
MAX_ATTEMPTS attempts; an interrupt (Ctrl-C, SIGTERM) uses none, and neither does a write that
fails for lack of space or a read-only disk: the point is not at fault. Such a write ends the run
in one line (WriteFailed); where the storage cannot record the interruption either, the trial
stays RUNNING and the next run finds its worker gone and retrains it. `retry_failed` gives points
that failed for good another round.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from studies.engine.liveness import Liveness
from studies.engine.tasks import ROBUSTNESS_SETS, TASKS, TaskOutcome, TrainHooks, preflight
from studies.results_location import ensure_writable
from studies.run_options import RunOptions
from studies.spec.study import Point, StudySpec
from studies.store.records import (
    FAILURE_ATTR,
    IDENTITIES_ATTR,
    IDENTITY_ATTR,
    POINT_ATTR,
    RECIPES_ATTR,
    RETRY_ATTR,
    SPEED_PLAN_ATTR,
    SPEED_PLANS_ATTR,
    VALUES_ATTR,
    identity_hash,
    point_states,
    point_values,
    recipe_digest,
    study_name,
)
from studies.store.storage import StoredStudy, choose_storage
from studies.training import speed_choice, stop
from studies.training.devices import resolve_device
from studies.training.stop import Interrupted  # noqa: F401  (re-exported: the engine's interrupt)
from studies.training.loop import Diverged, SpeedSource, train
from studies.write_faults import WriteFailed, disk_fault, named_write_faults

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(spec: StudySpec, options: RunOptions, choice, points: list[Point],
               identities: dict[str, str]) -> StoredStudy:
    """The spec's study, labelled, with the identities of its current points and the digests of
    what the spec declared for them stored beside it: what the report needs to tell current trials
    from superseded ones without data or a device."""
    stored = StoredStudy.open(choice, study_name(spec, options.profile), options.heartbeat_s, options.grace_s)
    attrs = stored.attrs()
    recipes = {p.key: recipe_digest(spec.declared_recipe(p, options.profile)) for p in points}
    for key, value in {"spec": spec.name, "title": spec.title, "kind": spec.kind, "dataset": spec.dataset,
                       "profile": options.profile, IDENTITIES_ATTR: identities, RECIPES_ATTR: recipes}.items():
        if attrs.get(key) != value:
            stored.set_attr(key, value)
    return stored


class StudyRunner:
    def __init__(self, spec: StudySpec, options: RunOptions, announce: bool = True):
        self.spec, self.options = spec, options
        resolve_device(options.device)  # a device this machine lacks is refused before anything is stored
        self.profile = spec.profile(options.profile)
        self.points = {p.key: p for p in spec.points(options.profile)}
        first = next(iter(self.points.values()))
        task_identity = preflight(spec, self.profile, self._config(first))
        self.configs = {key: self._config(point) for key, point in self.points.items()}
        self.identities = {key: identity_hash(config.to_dict(), task_identity) for key, config in self.configs.items()}
        # Everything a run writes besides the storage (checkpoints, the report) goes under results,
        # whatever --storage says: a directory that cannot take it is refused now, not after an epoch.
        ensure_writable(options.results)
        ensure_writable(options.results / "checkpoints", "checkpoint directory")
        self.choice = choose_storage(options.storage, options.results, options.workers)
        if announce:
            tqdm.write(f"{spec.name} [{options.profile}]: {self.choice.describe()}")
        with self._storage_writes():
            # Opening checks the storage's directory.
            self.stored = open_study(spec, options, self.choice, list(self.points.values()), self.identities)
        self.liveness = Liveness(self.choice, options.heartbeat_s, options.grace_s)
        self._announced: set[str] = set()  # speed-plan situations this process has named

    # --- what is where -------------------------------------------------------------------------

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.stored.trials()

    def retry_marks(self) -> dict[str, int]:
        return self.stored.attrs().get(RETRY_ATTR, {})

    def states(self) -> dict[str, str]:
        return point_states(self.trials(), self.identities, self.retry_marks())

    def counts(self) -> dict[str, int]:
        states = self.states()
        counts: dict[str, int] = defaultdict(int)
        for key in self.points:
            counts[states.get(key, "missing")] += 1
        return counts

    # --- the worker loop ----------------------------------------------------------------------

    def _storage_writes(self):
        """Around the engine's own storage writes: a full or read-only disk under the storage ends the
        run in one line naming the storage (a trial it could not finish recording is retrained by the
        next run)."""
        where = self.choice.path if self.choice.path is not None else self.choice.describe()
        return named_write_faults(where, "once it has room (or is writable again), run the same command again")

    def run(self) -> dict[str, int]:
        """Train every missing point; returns the final point counts by state."""
        with self._storage_writes():
            return self._work()

    def _work(self) -> dict[str, int]:
        if self.options.retry_failed:
            self._mark_retries()
        bar = tqdm(total=len(self.points), desc=f"{self.spec.name} [{self.options.profile}]", unit="trial",
                   disable=not self.options.progress)
        waited = False
        while True:
            stop.check()  # a signal whose exception was swallowed between trials claims nothing more
            for number in self.liveness.fail_dead(self.stored):
                tqdm.write(f"trial {number}: its worker is gone; failed, its point will be retrained")
            with self.stored.lock():
                counts = self._enqueue_missing()
            bar.n = counts["done"] + counts["failed"]
            bar.refresh()
            number = self._claim()
            if number is not None:
                waited = False
                self._run_trial(number)
                continue
            if counts["pending"] == 0:
                break
            if not waited:
                tqdm.write(f"waiting for {counts['pending']} trial(s) of other workers")
                waited = True
            time.sleep(min(self.options.heartbeat_s, 2.0))
        bar.close()
        return dict(self.counts())

    def _enqueue_missing(self) -> dict[str, int]:
        """Under the storage lock: one WAITING trial for every point without a live or finished one."""
        states = self.states()
        for key, point in self.points.items():
            if states.get(key) in (None, "retry"):
                self.stored.enqueue({
                    POINT_ATTR: key, VALUES_ATTR: point_values(point), IDENTITY_ATTR: self.identities[key],
                })
                states[key] = "pending"
        counts: dict[str, int] = defaultdict(int)
        for key in self.points:
            counts[states.get(key, "missing")] += 1
        return counts

    def _mark_retries(self) -> None:
        """Failures so far no longer count for the points that failed for good."""
        with self.stored.lock():
            failed = [key for key, state in self.states().items() if state == "failed"]
            if failed:
                marks = dict(self.retry_marks())
                next_number = len(self.trials())
                marks.update({key: next_number for key in failed})
                self.stored.set_attr(RETRY_ATTR, marks)
                tqdm.write(f"retrying {len(failed)} failed point(s)")

    def _claim(self) -> int | None:
        """Move one WAITING trial of this study's current points to RUNNING for this worker; its number."""
        for trial in self.trials():
            if trial.state != TrialState.WAITING:
                continue
            key = trial.user_attrs.get(POINT_ATTR)
            if key not in self.points or trial.user_attrs.get(IDENTITY_ATTR) != self.identities[key]:
                continue  # another spec's or budget's; left for the run that asks for it
            if self.stored.claim(trial.number):
                return trial.number
        return None

    # --- one trial ---------------------------------------------------------------------------

    def _run_trial(self, number: int) -> None:
        key = self.stored.trial(number).user_attrs[POINT_ATTR]
        point = self.points[key]
        with self.liveness.keep_alive(self.stored, number):
            nuisance = self._tune_nuisance(point)
            config = self._config(point, nuisance)
            started = time.time()
            checkpoint = self._checkpoint_path(key, self.identities[key])
            attrs: dict[str, Any] = {"config": config.to_dict()}
            if nuisance:
                attrs["nuisance"] = nuisance
            self.stored.set_trial_attrs(number, attrs)
            if checkpoint.exists():
                tqdm.write(f"resuming {key} from its last checkpoint")
            try:
                hooks = TrainHooks(checkpoint=checkpoint, speed_plan=self._speed_source(number))
                outcome = TASKS[self.spec.kind](self.spec, self.profile, config, hooks)
            except Diverged as error:
                self._fail(number, key, f"diverged: {error}")
                checkpoint.unlink(missing_ok=True)
                return
            except (torch.OutOfMemoryError, MemoryError) as error:
                self._fail(number, key, f"out of memory: {type(error).__name__}: {error}"[:500])
                return
            except WriteFailed as error:  # the disk's fault, not the point's: no attempt used
                raise self._interrupted_by_disk(number, key, error) from error
            except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM: no attempt used; the checkpoint stays
                how = "SIGTERM" if isinstance(error, Interrupted) else "Ctrl-C"
                self._fail(number, key, f"interrupted: {how}")
                stop.clear()
                raise
            except BaseException as error:  # recorded, then raised: a bug must stay visible
                cause = disk_fault(error) if isinstance(error, Exception) else None
                if cause is not None:  # a write that no one named (a library's cache): still the disk's fault
                    failed = WriteFailed(cause.filename or "a file", cause)
                    raise self._interrupted_by_disk(number, key, failed) from error
                self._fail(number, key, f"error: {type(error).__name__}: {error}"[:500])
                raise
        self._complete(number, key, outcome, {"wall_seconds": time.time() - started})
        checkpoint.unlink(missing_ok=True)

    def _interrupted_by_disk(self, number: int, key: str, error: WriteFailed) -> WriteFailed:
        """Record the trial as interrupted (its last checkpoint, whole, stays); returns the error to
        end the run with, saying what the next run will do."""
        try:
            self._fail(number, key, f"interrupted: {error}")
        except Exception as failure:  # the storage sits on the same disk
            if disk_fault(failure) is None:
                raise
            return error.advising("the storage could not record the interruption either; once the disk has room "
                                  "(or is writable again), run the same command again: it retrains the trial")
        return error.advising("the trial was recorded as interrupted (no attempt used); once the disk has room (or "
                              "is writable again), run the same command again: it resumes the trial from its last "
                              "checkpoint, if any")

    def _fail(self, number: int, key: str, reason: str) -> None:
        self.stored.fail(number, {FAILURE_ATTR: reason})  # False: already failed elsewhere
        tqdm.write(f"FAILED {key}: {reason}")

    def _complete(self, number: int, key: str, outcome: TaskOutcome, extra: dict[str, Any]) -> None:
        """Record the result under the storage lock: on the trial while it is still ours; if another
        worker failed it meanwhile (it judged this worker gone), as a new completed trial when the
        point has none, else not at all. One line either way."""
        attrs = {"metrics": outcome.metrics, **extra}
        if outcome.rows:
            attrs["rows"] = json.dumps(outcome.rows)
        summary = f"test error {100 * outcome.metrics['test_error']:.2f}% in {extra['wall_seconds']:.0f} s"
        with self.stored.lock():
            identity = self.identities[key]
            completed = [t.number for t in self.trials() if t.state == TrialState.COMPLETE
                         and t.user_attrs.get(POINT_ATTR) == key and t.user_attrs.get(IDENTITY_ATTR) == identity]
            if completed:
                self._fail(number, key, f"superseded: the point was completed by trial {completed[0]}")
                tqdm.write(f"discarded {key} (trial {number}): the point was completed by trial "
                           f"{completed[0]} meanwhile")
                return
            if self.stored.complete(number, outcome.objective, attrs):
                tqdm.write(f"done {key}: {summary}")
                return
            # Another worker failed it (it judged this one gone): keep the result anyway.
            frozen = self.stored.trial(number)
            self.stored.add_completed(outcome.objective, {
                **{k: v for k, v in frozen.user_attrs.items() if k != FAILURE_ATTR}, **attrs,
                "recovered_from_trial": number,
            })
            tqdm.write(f"kept {key}: {summary} (trial {number} was failed by another worker meanwhile; "
                       "its result is stored as a new completed trial)")

    def _speed_source(self, number: int | None) -> SpeedSource:
        """The CPU speed plan for a run: the one stored with the study for this machine and shape,
        else chosen now (from this machine's cache, or measured) and stored under the storage lock
        (where another worker stored one meanwhile, that one); recorded on the trial."""

        def source(model, images, bf16):
            where = speed_choice.situation(model, images, bf16)
            if where is None:
                return None
            choice = self._stored_speed_choice(where.key)
            if choice is None:
                # Under the lock: workers on one machine wait instead of measuring at once (and
                # disturbing each other's timings); the first one's choice is everyone's.
                with self.stored.lock():
                    choice = self._stored_speed_choice(where.key)
                    if choice is None:
                        choice = speed_choice.choose(where)
                        plans = dict(self.stored.attrs().get(SPEED_PLANS_ATTR, {}))
                        plans[where.key] = choice.to_dict()
                        self.stored.set_attr(SPEED_PLANS_ATTR, plans)
            if where.key not in self._announced:
                self._announced.add(where.key)
                tqdm.write(f"speed paths for {where.sites.describe()}: {choice.plan.describe()} ({choice.why})")
            if number is not None:
                self.stored.set_trial_attrs(number, {SPEED_PLAN_ATTR: {**choice.to_dict(), "why": choice.why}})
            return choice.plan

        return source

    def _stored_speed_choice(self, key: str) -> speed_choice.Choice | None:
        stored = self.stored.attrs().get(SPEED_PLANS_ATTR, {}).get(key)
        return speed_choice.Choice.from_dict(stored) if stored else None

    def _checkpoint_path(self, key: str, identity: str):
        digest = hashlib.sha1(f"{key}|{identity}".encode()).hexdigest()[:16]
        return self.options.results / "checkpoints" / self.stored.name / f"{digest}.pt"

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
        tuning = self.stored.sibling(
            f"{self.stored.name}.nuisance.{point.config_key}.{self.identities[point.key]}", "maximize",
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
                result = train(self._config(replace(point, seed=profile.seeds[0]), values), on_epoch=report,
                               speed_plan=self._speed_source(None))
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
    try:
        return StudyRunner(spec, options).run()
    finally:
        ROBUSTNESS_SETS.clear()  # the next study tests on another set, or on none
