"""The stored trials of one study as tables: the completed trials of the current spec and budget
(one row per grid point x seed), what was superseded, and the points that failed for good.

Read from the storage alone: the spec names the points, and the identities of their current
trials are the ones the engine stored with the study when it last ran it. Nothing here prepares
data, picks a device or opens the study for writing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from studies.data import datasets
from studies.run_options import RunOptions
from studies.spec.study import Point, StudySpec
from studies.store.records import (
    IDENTITIES_ATTR,
    IDENTITY_ATTR,
    POINT_ATTR,
    RECIPES_ATTR,
    RETRY_ATTR,
    VALUES_ATTR,
    final_failures,
    recipe_digest,
    study_name,
)
from studies.store.storage import StoredStudy, choose_storage

HIDDEN_METRICS = ("history", "robustness_details")


@dataclass
class StudyTrials:
    spec: StudySpec
    options: RunOptions
    # every trial stored for the study, in number order
    stored: list[FrozenTrial]
    # completed trials of the current points and identities, one per point
    frame: pd.DataFrame
    # the model's scientific parameters of the spec (table columns), in the spec's order
    scientific: list[str]
    # completed trials kept in storage but left out: of an older budget or settings, or of points
    # the spec no longer has
    superseded: int
    outside: int
    # points whose final state is failed, with the reason
    failed: pd.DataFrame

    @property
    def profile(self):
        return self.spec.profile(self.options.profile)


def file_stem(spec: StudySpec) -> str:
    """Result files are named after the study and, when it is not MNIST, the dataset."""
    return spec.name if spec.dataset == "mnist" else f"{spec.name}-{spec.dataset}"


def current_identities(spec: StudySpec, profile: str, points: list[Point], attrs: dict,
                       trials: list[FrozenTrial]) -> dict[str, str]:
    """Per point of the spec, the identity its current trials carry: as the engine stored it with
    the study at its last run, where the spec still declares what it declared then (a point whose
    budget or settings were edited since has no current trial until it is run again); for a study
    stored before the engine kept identities, the identity of the point's newest trial (the one its
    last run enqueued)."""
    stored, recipes = attrs.get(IDENTITIES_ATTR), attrs.get(RECIPES_ATTR)
    if stored is not None:
        return {p.key: stored[p.key] for p in points if p.key in stored
                and (recipes is None or recipes.get(p.key) == recipe_digest(spec.declared_recipe(p, profile)))}
    keys, newest = {p.key for p in points}, {}
    for trial in sorted(trials, key=lambda t: t.number):
        key = trial.user_attrs.get(POINT_ATTR)
        if key in keys and IDENTITY_ATTR in trial.user_attrs:
            newest[key] = trial.user_attrs[IDENTITY_ATTR]
    return newest


def load_trials(spec: StudySpec, options: RunOptions) -> StudyTrials:
    spec_points = spec.points(options.profile)
    points = {p.key for p in spec_points}
    stored = StoredStudy.read(choose_storage(options.storage, options.results), study_name(spec, options.profile))
    trials, attrs = (stored.trials(), stored.attrs()) if stored is not None else ([], {})
    identities = current_identities(spec, options.profile, spec_points, attrs, trials)
    rows, superseded, outside = [], 0, 0
    for trial in trials:
        key = trial.user_attrs.get(POINT_ATTR)
        if trial.state != TrialState.COMPLETE or key is None:
            continue
        if key not in points:
            outside += 1
            continue
        if trial.user_attrs.get(IDENTITY_ATTR) != identities.get(key):
            superseded += 1
            continue
        config = trial.user_attrs.get("config", {})
        metrics = {k: v for k, v in trial.user_attrs.get("metrics", {}).items() if k not in HIDDEN_METRICS}
        rows.append({
            "trial": trial.number,
            "point": key,
            **trial.user_attrs[VALUES_ATTR],
            **{f"nuisance_{k}": v for k, v in trial.user_attrs.get("nuisance", {}).items()},
            **metrics,
            "batch_size": config.get("batch_size"),
            "split_seed": config.get("split_seed"),
            "learning_rate": config.get("lr"),
            "dtype": "bf16" if config.get("bf16") else "float32",
            "wall_seconds": trial.user_attrs.get("wall_seconds"),
            "started": trial.datetime_start,
            "completed": trial.datetime_complete,
        })
    frame = pd.DataFrame(rows)
    if not frame.empty:
        # One completed trial per point is the engine's invariant; keep the first if not.
        frame = frame.sort_values("trial").drop_duplicates(subset="point", keep="first").reset_index(drop=True)
        if "routing_iters" in frame:  # missing for CNN rows; keep the column integer
            frame["routing_iters"] = frame["routing_iters"].astype("Int64")
    failed = final_failures(trials, identities, attrs.get(RETRY_ATTR, {}))
    scientific = []
    for arm in spec.arms:
        scientific += [name for name in spec.scientific_names(arm.model) if name not in scientific]
    return StudyTrials(spec, options, trials, frame, scientific, superseded, outside, pd.DataFrame(failed))


def _values(frame: pd.DataFrame, column: str) -> str:
    if column not in frame:
        return "?"
    return ", ".join(str(v) for v in sorted(frame[column].dropna().unique()))


def budget_lines(trials: StudyTrials) -> list[str]:
    """The budget a table came from, stated beside it: images, epochs, seeds, device, dtype, torch,
    and every training parameter the profile fixes."""
    frame, profile = trials.frame, trials.profile
    wall = frame["wall_seconds"].sum() if "wall_seconds" in frame else float("nan")
    span = (frame["completed"].max() - frame["started"].min()).total_seconds() if len(frame) else 0.0
    recipe = ", ".join(f"{k} = {v}" for k, v in sorted(profile.recipe.items()))
    recipe += "".join(f"; for {model} only: " + ", ".join(f"{k} = {v}" for k, v in sorted(values.items()))
                      for model, values in sorted(profile.per_model.items()))
    lines = [
        f"- budget (profile `{trials.options.profile}`): {_values(frame, 'train_images')} training images, "
        f"epochs {_values(frame, 'epochs')}, batch {_values(frame, 'batch_size')}, images seen "
        f"{_values(frame, 'images_seen')}, seeds {_values(frame, 'seed')} "
        f"(n = {frame['seed'].nunique() if len(frame) else 0} per row)",
        f"- splits (class-stratified at random, split seed {_values(frame, 'split_seed')}): "
        f"{_values(frame, 'train_images')} training and {_values(frame, 'val_images')} validation images, "
        f"disjoint, from the training set; test images {_values(frame, 'test_images')}"
        + (" (the whole test set)" if len(frame) and set(frame["test_images"]) == {_test_set_size(trials)} else ""),
        f"- fixed by the profile: {recipe or 'nothing'}; learning rate {_values(frame, 'learning_rate')}",
        f"- device {_values(frame, 'device')}, dtype {_values(frame, 'dtype')}, threads {_values(frame, 'threads')}, "
        f"torch {_values(frame, 'torch_version')}; "
        f"{len(frame)} completed trials, {wall / 60:.1f} min of trial time "
        f"({span / 60:.1f} min wall clock, first start to last finish)",
    ]
    if trials.superseded or trials.outside:
        lines.append(f"- kept in storage but not in these tables: {trials.superseded} completed trial(s) of an "
                     f"earlier budget or settings (superseded), {trials.outside} of grid points this spec no "
                     "longer has")
    return lines


def _test_set_size(trials: StudyTrials) -> int:
    return sum(datasets.get_info(trials.spec.dataset).test_histogram)


def failure_lines(trials: StudyTrials) -> list[str]:
    if trials.failed.empty:
        return []
    return ["Failed points (their final state; a point retrained successfully is not listed):", "",
            trials.failed.to_markdown(index=False), ""]


def files_line(files: list[Path]) -> str:
    return "Files: " + ", ".join(f"[{f.name}]({f.name})" for f in files)
