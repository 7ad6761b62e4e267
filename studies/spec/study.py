"""Declarative study specs: TOML files loaded into typed, validated dataclasses.

Vocabulary of the tuning playbook: *scientific* parameters are the ones a study compares
(its grid), *nuisance* parameters are tuned separately for every grid point so that the
comparison is fair, and *fixed* parameters hold for every trial. A profile sets the budget
(training images, epochs, seeds) for one kind of machine.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import models
from studies.data import datasets
from studies.training.config import TrainConfig

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"
PROFILES = ("smoke", "quick", "standard", "paper")
STUDY_KINDS = ("accuracy", "affnist", "rotation", "throughput")
# Parameters of TrainConfig that a study may set; the rest belong to the engine.
TRAIN_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig)
    if f.name not in {"model", "model_options", "seed", "dataset", "data_root", "progress", "device"}
)
BUDGET_KEYS = ("epochs", "train_size", "val_size", "test_size", "batch_size", "eval_batch_size")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the file and the offending key."""


@dataclass(frozen=True)
class Arm:
    """One model and the grid of its scientific parameters."""

    model: str
    scientific: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Nuisance:
    """A nuisance parameter tuned per grid point (TPE), with its search range."""

    name: str
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    seeds: tuple[int, ...]
    budget: dict[str, Any]
    # Per-profile restriction of scientific values, e.g. fewer routing iterations in smoke.
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    nuisance_trials: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One trial of the study: a model, its scientific values and a seed."""

    model: str
    values: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def key(self) -> str:
        return "|".join([self.model, *(f"{k}={v}" for k, v in self.values), f"seed={self.seed}"])

    @property
    def config_key(self) -> str:
        """The grid point without the seed: what seeds are averaged over."""
        return "|".join([self.model, *(f"{k}={v}" for k, v in self.values)])


@dataclass(frozen=True)
class StudySpec:
    name: str
    title: str
    kind: str
    dataset: str
    arms: tuple[Arm, ...]
    fixed: dict[str, Any]
    nuisance: tuple[Nuisance, ...]
    profiles: dict[str, Profile]
    source: str
    # Kind-specific settings (e.g. angles of a rotation sweep), validated by that kind.
    settings: dict[str, Any] = field(default_factory=dict)

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise SpecError(f"{self.source}: no profile {name!r}; defined: {', '.join(self.profiles)}")
        return self.profiles[name]

    def points(self, profile: str) -> list[Point]:
        """Every grid point x seed of a profile, in a stable order."""
        chosen = self.profile(profile)
        points = []
        for arm in self.arms:
            if chosen.models is not None and arm.model not in chosen.models:
                continue
            grid = {k: chosen.grid.get(k, v) for k, v in arm.scientific.items()}
            names = sorted(grid)
            for combo in itertools.product(*(grid[k] for k in names)):
                for seed in chosen.seeds:
                    points.append(Point(arm.model, tuple(zip(names, combo)), seed))
        return points

    def arm(self, model: str) -> Arm:
        return next(arm for arm in self.arms if arm.model == model)

    def train_config(self, point: Point, profile: str, overrides: dict[str, Any] | None = None, **engine) -> TrainConfig:
        """The TrainConfig of a point: fixed < arm fixed < profile budget < scientific < overrides."""
        arm = self.arm(point.model)
        values = {**self.fixed, **arm.fixed, **self.profile(profile).budget, **dict(point.values), **(overrides or {})}
        option_names = set(models.option_names(point.model))
        model_options = {k: v for k, v in values.items() if k in option_names}
        train_values = {k: v for k, v in values.items() if k in TRAIN_KEYS}
        return TrainConfig(
            model=point.model, model_options=model_options, dataset=self.dataset, seed=point.seed,
            **train_values, **engine,
        )


def _expect(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise SpecError(f"{source}: {message}")


def _check_keys(table: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    _expect(not unknown, source, f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}")


def _expected_type(model: str, key: str) -> type | None:
    """The type a parameter must have: from the model's config or TrainConfig defaults."""
    if key in models.option_names(model):
        return type(getattr(models.config_class(model)(), key))
    if key in TRAIN_KEYS:
        default = getattr(TrainConfig(), key)
        return int if key in ("train_size", "test_size") else type(default)
    return None


def _check_value(model: str, key: str, value: Any, source: str, where: str) -> None:
    expected = _expected_type(model, key)
    _expect(expected is not None, source, f"{where}: {key!r} is neither a TrainConfig field nor an option of {model!r}")
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if expected is tuple and isinstance(value, list):
        ok = True
    _expect(ok, source, f"{where}: {key} = {value!r} should be of type {expected.__name__}")


def _load_profile(name: str, table: dict, source: str) -> Profile:
    where = f"[profiles.{name}]"
    _expect(name in PROFILES, source, f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    allowed = {"seeds", "grid", "models", "nuisance_trials", *BUDGET_KEYS, "extra"}
    _check_keys(table, allowed, source, where)
    seeds = table.get("seeds")
    _expect(isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds),
            source, f"{where}: seeds must be a non-empty list of integers")
    _expect(len(set(seeds)) == len(seeds), source, f"{where}: seeds must be distinct")
    grid = table.get("grid", {})
    _expect(isinstance(grid, dict), source, f"{where}: grid must be a table")
    models_ = table.get("models")
    trials = table.get("nuisance_trials", 0)
    _expect(isinstance(trials, int) and trials >= 0, source, f"{where}: nuisance_trials must be an integer >= 0")
    return Profile(
        name=name,
        seeds=tuple(seeds),
        budget={k: table[k] for k in BUDGET_KEYS if k in table},
        grid={k: tuple(v) for k, v in grid.items()},
        models=tuple(models_) if models_ is not None else None,
        nuisance_trials=trials,
        extra=table.get("extra", {}),
    )


def _load_arm(table: dict, index: int, source: str) -> Arm:
    where = f"[[arms]] #{index + 1}"
    _check_keys(table, {"model", "scientific", "fixed"}, source, where)
    model = table.get("model")
    _expect(model in models.names(), source, f"{where}: model {model!r} unknown; valid: {', '.join(models.names())}")
    scientific = table.get("scientific", {})
    for key, values in scientific.items():
        _expect(isinstance(values, list) and values, source, f"{where}: scientific.{key} must be a non-empty list")
        for value in values:
            _check_value(model, key, value, source, f"{where} scientific")
    fixed = table.get("fixed", {})
    for key, value in fixed.items():
        _check_value(model, key, value, source, f"{where} fixed")
    return Arm(model=model, scientific={k: tuple(v) for k, v in scientific.items()}, fixed=fixed)


def _load_nuisance(table: dict, source: str) -> tuple[Nuisance, ...]:
    params = []
    for name, bounds in table.items():
        where = f"[nuisance] {name}"
        _expect(name in TRAIN_KEYS, source, f"{where}: only TrainConfig fields can be nuisance parameters")
        _expect(isinstance(bounds, dict), source, f"{where}: expected {{ low = ..., high = ..., log = ... }}")
        _check_keys(bounds, {"low", "high", "log"}, source, where)
        low, high = bounds.get("low"), bounds.get("high")
        _expect(all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)),
                source, f"{where}: low and high must be numbers")
        _expect(low < high, source, f"{where}: low must be below high")
        _expect(not bounds.get("log") or low > 0, source, f"{where}: a log range needs low > 0")
        params.append(Nuisance(name, float(low), float(high), bool(bounds.get("log", False))))
    return tuple(params)


def _validate_configs(spec: StudySpec) -> None:
    """Build every point's TrainConfig and model config once, so range errors surface now."""
    for profile in spec.profiles:
        for model in spec.profile(profile).models or ():
            _expect(any(a.model == model for a in spec.arms), spec.source,
                    f"[profiles.{profile}] models: {model!r} has no [[arms]] entry")
        for key, values in spec.profile(profile).grid.items():
            arms = [a for a in spec.arms if key in a.scientific]
            _expect(bool(arms), spec.source, f"[profiles.{profile}] grid: {key!r} is not a scientific parameter")
            for value in values:
                _check_value(arms[0].model, key, value, spec.source, f"[profiles.{profile}] grid")
        for point in spec.points(profile):
            try:
                config = spec.train_config(point, profile)
                models.make_config(config.model, **config.model_options)
            except ValueError as error:
                raise SpecError(f"{spec.source}: [profiles.{profile}] {point.key}: {error}") from None


def parse_spec(data: dict, source: str) -> StudySpec:
    allowed = {"name", "title", "kind", "dataset", "fixed", "arms", "nuisance", "profiles", "settings"}
    _check_keys(data, allowed, source, "the top level")
    name = data.get("name")
    _expect(isinstance(name, str) and name.isidentifier(), source, "name must be an identifier-like string")
    kind = data.get("kind", "accuracy")
    _expect(kind in STUDY_KINDS, source, f"kind {kind!r} unknown; valid: {', '.join(STUDY_KINDS)}")
    dataset = data.get("dataset", "mnist")
    _expect(dataset in datasets.DATASETS, source, f"dataset {dataset!r} unknown; valid: {', '.join(datasets.DATASETS)}")
    arms = tuple(_load_arm(t, i, source) for i, t in enumerate(data.get("arms", [])))
    _expect(kind == "throughput" or bool(arms), source, "a study needs at least one [[arms]] entry")
    fixed = data.get("fixed", {})
    for key, value in fixed.items():
        owners = [a.model for a in arms if _expected_type(a.model, key) is not None]
        _expect(bool(owners) or key in TRAIN_KEYS, source, f"[fixed] {key!r} is neither a TrainConfig field nor a model option")
        _check_value(owners[0] if owners else arms[0].model, key, value, source, "[fixed]")
    profiles = data.get("profiles", {})
    _expect(isinstance(profiles, dict) and profiles, source, "a study needs at least one [profiles.<name>] table")
    spec = StudySpec(
        name=name,
        title=data.get("title", name),
        kind=kind,
        dataset=dataset,
        arms=arms,
        fixed=fixed,
        nuisance=_load_nuisance(data.get("nuisance", {}), source),
        profiles={n: _load_profile(n, t, source) for n, t in profiles.items()},
        source=source,
        settings=data.get("settings", {}),
    )
    for profile in spec.profiles.values():
        _expect(not (spec.nuisance and profile.nuisance_trials) or profile.budget.get("val_size", 0) > 0,
                source, f"[profiles.{profile.name}]: tuning nuisance parameters needs val_size > 0")
    if kind != "throughput":
        _validate_configs(spec)
    return spec


def load_spec(name_or_path: str, dataset: str | None = None) -> StudySpec:
    """A built-in study by name (studies/specs/<name>.toml) or a spec file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPEC_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SpecError(f"unknown study {name_or_path!r}; built-in studies: {', '.join(builtin_names())}")
    if not path.exists():
        raise SpecError(f"spec file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    if dataset is not None:
        data["dataset"] = dataset
    return parse_spec(data, str(path))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.toml"))
