"""What the engine writes on a trial and on its study, and what the engine and the report read back:
a trial's point, identity and failure, the identities of a study's current points, and the state of
every point of a study from its trials."""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.spec.study import Point, StudySpec
from studies.training.loop import RUN_INDEPENDENT

POINT_ATTR = "point"
# The point's values (model, scientific parameters, seed) as a dict: the trial's coordinates. They
# are not Optuna parameters, whose fixed categorical choices would refuse a spec that grows.
VALUES_ATTR = "values"
# A hash of everything the result depends on besides the point (the whole training configuration,
# the kind's settings, the robustness set): trials of an older budget keep their results but are
# superseded, never mixed into a table.
IDENTITY_ATTR = "identity"
# A study attribute: point key -> the identity of its current trials, written by every run, so the
# report tells current trials from superseded ones without preparing the data they depend on.
IDENTITIES_ATTR = "identities"
# ... and point key -> the digest of what the spec declared for it then (`recipe_digest`): a spec
# edited since (a budget, a setting) no longer matches, and its points' stored trials are superseded.
RECIPES_ATTR = "declared_recipes"
FAILURE_ATTR = "failure"
# A study attribute: point key -> trial number from which failures count again (RETRY_FAILED=1).
RETRY_ATTR = "retry_from"
# A study attribute: situation key -> the CPU speed plan chosen for it (studies/training/speed_choice.py),
# so every worker and every later run of the study trains with the same paths on that machine ...
SPEED_PLANS_ATTR = "speed_plans"
# ... and on each trial, the choice it was handed (plan, factors, why).
SPEED_PLAN_ATTR = "speed_plan"
# Attempts a point gets when its worker crashes or runs out of memory; a divergence is final.
MAX_ATTEMPTS = 3
# Failures that are not the point's fault and use up no attempt.
NOT_AN_ATTEMPT = ("interrupted", "superseded")
TERMINAL = ("diverged",)


def study_name(spec: StudySpec, profile: str) -> str:
    return f"{spec.name}.{spec.dataset}.{profile}"


def point_values(point: Point) -> dict[str, Any]:
    return {"model": point.model, **dict(point.values), "seed": point.seed}


def identity_hash(config: dict[str, Any], task_identity: dict[str, Any]) -> str:
    """Everything a trial's result depends on, but where and how fast it ran (the trainer's
    RUN_INDEPENDENT fields: device, data location, progress bars, compilation, determinism)."""
    return _digest({"config": {k: v for k, v in config.items() if k not in RUN_INDEPENDENT}, "task": task_identity})


def recipe_digest(declared: dict[str, Any]) -> str:
    """A short digest of a point's declared recipe (`StudySpec.declared_recipe`)."""
    return _digest(declared)


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def failure_kind(trial: optuna.trial.FrozenTrial) -> str:
    """The first word of a failed trial's reason; a trial failed by Optuna's stale-heartbeat check
    has none and counts as stale."""
    reason = str(trial.user_attrs.get(FAILURE_ATTR, "stale: no heartbeat (worker killed?)"))
    return reason.split(":", 1)[0]


def point_states(trials: list[optuna.trial.FrozenTrial], identities: dict[str, str],
                 retry_from: dict[str, int] | None = None) -> dict[str, str]:
    """Per point key: done, failed (final), pending (waiting or running) or retry. Only trials of the
    point's current identity count, and failures before the point's retry mark count no more."""
    retry_from = retry_from or {}
    by_point: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for trial in trials:
        key = trial.user_attrs.get(POINT_ATTR)
        if key in identities and trial.user_attrs.get(IDENTITY_ATTR) == identities[key]:
            by_point[key].append(trial)
    states = {}
    for key, group in by_point.items():
        failures = [t for t in group if t.state == TrialState.FAIL and t.number >= retry_from.get(key, -1)]
        attempts = [t for t in failures if failure_kind(t) not in NOT_AN_ATTEMPT]
        if any(t.state == TrialState.COMPLETE for t in group):
            states[key] = "done"
        elif any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in group):
            states[key] = "pending"
        elif any(failure_kind(t) in TERMINAL for t in attempts) or len(attempts) >= MAX_ATTEMPTS:
            states[key] = "failed"
        else:
            states[key] = "retry"
    return states


def final_failures(trials: list[optuna.trial.FrozenTrial], identities: dict[str, str],
                   retry_from: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The points whose final state is failed, each with its last failure."""
    states = point_states(trials, identities, retry_from)
    rows = []
    for key, state in states.items():
        if state != "failed":
            continue
        last = max((t for t in trials if t.user_attrs.get(POINT_ATTR) == key and t.state == TrialState.FAIL
                    and t.user_attrs.get(IDENTITY_ATTR) == identities[key]), key=lambda t: t.number)
        rows.append({"point": key, "trial": last.number,
                     "reason": last.user_attrs.get(FAILURE_ATTR, "stale: no heartbeat (worker killed?)")})
    return rows
