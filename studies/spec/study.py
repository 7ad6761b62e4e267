"""Declarative study specs: TOML files loaded into typed, validated dataclasses.

Vocabulary of the tuning playbook: *scientific* parameters are the ones a study compares (its
grid), *nuisance* parameters are tuned separately for every grid point so that the comparison is
fair, and *fixed* parameters hold for every trial. A profile sets the budget (training images,
epochs, seeds) and the recipe for one kind of machine; whatever it sets is a fixed parameter of
that profile.

Arms may repeat a model with another grid (e.g. routing x reconstruction at shift2, and
augmentation alone at the paper's configuration). A point carries the values of every scientific
parameter of its model, filled in from the arm's fixed values or the defaults, so two arms that
reach the same configuration give the same point, trained once.
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import models
from models.fields import check_value
from studies.spec import schema
from studies.spec.schema import first_problem, merged_settings
from studies.training.config import TrainConfig
from studies.training.devices import bf16_supported, resolve_device

SPEC_DIR = Path(__file__).resolve().parent.parent / "builtin"
STUDY_KINDS = tuple(schema.KIND_SETTINGS)
# Training parameters a study may set; the others belong to the engine (which model, seed, data
# location, device, progress bars) or to how a run executes (compilation, determinism).
TRAIN_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig)
    if f.name not in {"model", "model_options", "seed", "dataset", "data_root", "progress", "device", "compile",
                      "deterministic"}
)
# A profile may ask for bf16 wherever the device has it (CUDA, or a CPU with AMX or AVX512-BF16).
BF16_AUTO = "auto"
# The smallest test or robustness subset a reported profile may use (a stratified random one).
MIN_SUBSET = 1000
# The capsule models: a comparison of models sets one of them, at its defaults, against another model.
REFERENCE_MODELS = ("capsnet", "capsnet_multi")


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
class Primary:
    """A declared primary comparison (schema.PrimaryTable): `level` minus `baseline` of `factor`
    ("model" for two models) within `model`, where the other scientific parameters take `within`'s
    values, on each of `metrics`."""

    factor: str
    baseline: Any
    level: Any
    metrics: tuple[str, ...]
    model: str | None = None
    within: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.factor == "model":
            return f"{self.level} − {self.baseline}"
        return f"{self.model}: {self.factor} {self.level} − {self.baseline}"


@dataclass(frozen=True)
class Profile:
    name: str
    seeds: tuple[int, ...]
    # The training parameters the profile fixes: budget (train_size, epochs, ...) and recipe
    # (batch_size, lr, bf16, ...).
    recipe: dict[str, Any]
    # Per-profile restriction of scientific values, e.g. fewer routing iterations in smoke.
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    nuisance_trials: int = 0
    # Training parameters for one model's trials only, over `recipe`.
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One model's values of scientific parameters, in place of `grid`'s for that model.
    model_grid: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)
    # The study kind's settings for this profile ([settings] with the profile's `settings` over it).
    settings: schema.Strict = field(default_factory=schema.NoSettings)

    def arm_grid(self, arm: Arm) -> dict[str, tuple[Any, ...]]:
        """The values of each of the arm's scientific parameters this profile trains."""
        own = self.model_grid.get(arm.model, {})
        return {k: own.get(k, self.grid.get(k, v)) for k, v in arm.scientific.items()}


@dataclass(frozen=True)
class Point:
    """One trial of the study: a model, the values of its scientific parameters and a seed."""

    model: str
    values: tuple[tuple[str, Any], ...]
    seed: int
    # The arm that produced the point first (its fixed parameters apply); not part of its identity.
    arm: int = field(default=0, compare=False)

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
    # The datasets on which the study's question makes sense (None: all).
    datasets: tuple[str, ...] | None = None
    # The comparisons the study exists to answer (its findings), in the spec's order.
    primary: tuple[Primary, ...] = ()

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise SpecError(f"{self.source}: no profile {name!r}; defined: {', '.join(self.profiles)}")
        return self.profiles[name]

    def supports(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets

    def scientific_names(self, model: str) -> list[str]:
        """Every parameter that some arm of `model` varies, sorted."""
        return sorted({name for arm in self.arms if arm.model == model for name in arm.scientific})

    def points(self, profile: str) -> list[Point]:
        """Every grid point x seed of a profile, in a stable order, each configuration once."""
        chosen = self.profile(profile)
        points: dict[str, Point] = {}
        for index, arm in enumerate(self.arms):
            if chosen.models is not None and arm.model not in chosen.models:
                continue
            grid = chosen.arm_grid(arm)
            names = sorted(grid)
            for combo in itertools.product(*(grid[k] for k in names)):
                values = self._all_scientific(index, dict(zip(names, combo)), profile)
                for seed in chosen.seeds:
                    point = Point(arm.model, values, seed, index)
                    points.setdefault(point.key, point)
        return list(points.values())

    def _all_scientific(self, index: int, combo: dict[str, Any], profile: str) -> tuple[tuple[str, Any], ...]:
        """The combination plus the values this arm gives the model's other scientific parameters."""
        arm = self.arms[index]
        config = self._train_config(index, combo, 0, profile, {}, {})
        model_config = models.make_config(arm.model, **config.model_options)
        values = {}
        for name in self.scientific_names(arm.model):
            values[name] = combo[name] if name in combo else (
                getattr(model_config, name) if name in models.option_names(arm.model) else getattr(config, name))
        return tuple(sorted(values.items()))

    def train_config(self, point: Point, profile: str, overrides: dict[str, Any] | None = None, **engine) -> TrainConfig:
        """The TrainConfig of a point: fixed < arm fixed < profile < the profile's per-model values
        < scientific < overrides."""
        return self._train_config(point.arm, dict(point.values), point.seed, profile, overrides or {}, engine)

    def declared_recipe(self, point: Point, profile: str) -> dict[str, Any]:
        """What the spec declares for a point, before anything is resolved on a machine (bf16 "auto"
        stays "auto"): model, dataset, seed, every training and model value and the kind's settings.
        The report compares it with the one stored at the last run to tell whether the stored
        identities still describe this spec."""
        arm = self.arms[point.arm]
        chosen = self.profile(profile)
        values = {**self.fixed, **arm.fixed, **chosen.recipe, **chosen.per_model.get(arm.model, {}),
                  **dict(point.values)}
        return {"model": arm.model, "dataset": self.dataset, "seed": point.seed, "values": values,
                "settings": json.loads(chosen.settings.model_dump_json())}

    def _train_config(self, index: int, scientific: dict[str, Any], seed: int, profile: str,
                      overrides: dict[str, Any], engine: dict[str, Any]) -> TrainConfig:
        arm = self.arms[index]
        chosen = self.profile(profile)
        values = {**self.fixed, **arm.fixed, **chosen.recipe, **chosen.per_model.get(arm.model, {}), **scientific,
                  **overrides}
        if values.get("bf16") == BF16_AUTO:
            values["bf16"] = bf16_supported(resolve_device(engine.get("device", "auto")))
        option_names = set(models.option_names(arm.model))
        model_options = {k: v for k, v in values.items() if k in option_names}
        train_values = {k: v for k, v in values.items() if k in TRAIN_KEYS}
        return TrainConfig(model=arm.model, model_options=model_options, dataset=self.dataset, seed=seed,
                           **train_values, **engine)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.toml"))


def spec_path(name_or_path: str) -> Path:
    """The file of a built-in study (a name without a suffix) or of a spec given by path; SpecError
    saying which of the two `name_or_path` is not."""
    builtin = SPEC_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and not Path(name_or_path).suffix and builtin.is_file():
        return builtin
    path = Path(name_or_path)
    if path.is_dir():
        raise SpecError(f"{path} is a directory; a study is a built-in name ({', '.join(builtin_names())}) or a "
                        ".toml spec file")
    if not path.is_file():
        if path.suffix or "/" in name_or_path:
            raise SpecError(f"spec file {path} does not exist")
        raise SpecError(f"unknown study {name_or_path!r}: neither a built-in study ({', '.join(builtin_names())}) "
                        "nor an existing spec file")
    return path


def load_spec(name_or_path: str, dataset: str | None = None) -> StudySpec:
    """A built-in study by name (studies/builtin/<name>.toml) or a spec file by path; `dataset`
    overrides the spec's own (an error where the study does not support it)."""
    path = spec_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:  # unreadable: permissions, a broken link, a disk error
        raise SpecError(f"spec file {path} cannot be read: {error.strerror or error}") from None
    spec = parse_spec(data, str(path))
    if dataset is not None and dataset != spec.dataset:
        if not spec.supports(dataset):
            raise SpecError(f"{path}: study {spec.name!r} runs on {', '.join(spec.datasets)} only, not {dataset!r}")
        spec = parse_spec({**data, "dataset": dataset}, str(path))
    return spec


def parse_spec(data: dict, source: str) -> StudySpec:
    """Check everything a spec says before anything is trained or stored: SpecError names the
    file and the key of the first problem."""
    try:
        table = schema.SpecFile.model_validate(data)
        _import_user_modules(table.imports, source)
        settings = schema.kind_settings(table.kind, schema._tuples(table.settings))
        profiles = {name: _profile(name, t, table) for name, t in table.profiles.items()}
    except ValidationError as error:
        raise SpecError(f"{source}: {first_problem(error)}") from None
    except ValueError as error:
        raise SpecError(f"{source}: {error}") from None
    del settings  # checked; each profile holds its merged settings
    checker = _Checker(source)
    arms = tuple(checker.arm(arm, index) for index, arm in enumerate(table.arms))
    if table.kind != "throughput" and not arms:
        raise SpecError(f"{source}: a study needs at least one [[arms]] entry")
    checker.fixed(table.fixed, arms)
    spec = StudySpec(
        name=table.name,
        title=table.title or table.name,
        kind=table.kind,
        dataset=table.dataset,
        arms=arms,
        fixed=dict(table.fixed),
        nuisance=tuple(checker.nuisance(name, bounds) for name, bounds in table.nuisance.items()),
        profiles=profiles,
        source=source,
        datasets=tuple(table.datasets) if table.datasets else None,
        primary=checker.distinct(tuple(checker.primary(entry, index, table.kind, arms)
                                       for index, entry in enumerate(table.primary))),
    )
    if not spec.supports(spec.dataset):
        raise SpecError(f"{source}: dataset {spec.dataset!r} is not among the study's datasets {list(spec.datasets)}")
    for profile in spec.profiles.values():
        checker.profile(profile, spec)
    if spec.kind != "throughput":
        checker.configs(spec)
    return spec


def _import_user_modules(names: list[str], source: str) -> None:
    """Import the spec's `imports`, looking beside the spec file first: how a user adds a model
    (a module that calls `models.register`) without editing the suite."""
    folder = str(Path(source).resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as error:  # the user's module: say what went wrong in one line
                raise SpecError(f"{source}: imports: cannot import {name!r}: {type(error).__name__}: {error}") from None
    finally:
        if added:
            sys.path.remove(folder)


def _profile(name: str, table: schema.ProfileTable, spec: schema.SpecFile) -> Profile:
    return Profile(
        name=name,
        seeds=tuple(table.seeds),
        recipe=dict(table.model_extra or {}),
        grid={k: tuple(v) for k, v in table.grid.items()},
        models=tuple(table.models) if table.models is not None else None,
        nuisance_trials=table.nuisance_trials,
        per_model={model: dict(values) for model, values in table.per_model.items()},
        model_grid={model: {k: tuple(v) for k, v in grid.items()} for model, grid in table.model_grid.items()},
        settings=merged_settings(spec.kind, spec.settings, table.settings),
    )


class _Checker:
    """Checks the parameter values a spec sets against TrainConfig's and the model configs'
    annotations, each in one place: which class owns a key decides how its value is judged."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str):
        raise SpecError(f"{self.source}: {where}: {message}")

    def value(self, model: str, key: str, value: Any, where: str) -> None:
        if key in models.option_names(model):
            owner = models.config_class(model)
        elif key in TRAIN_KEYS:
            owner = TrainConfig
        else:
            self.fail(where, f"{key!r} is neither a training parameter ({', '.join(TRAIN_KEYS)}) "
                             f"nor an option of {model!r} ({', '.join(models.option_names(model))})")
        try:
            check_value(owner, key, value)
        except ValueError as error:
            self.fail(where, str(error))

    def arm(self, table: schema.ArmTable, index: int) -> Arm:
        where = f"arms[{index}]"
        if table.model not in models.names():
            self.fail(where, f"model {table.model!r} unknown; valid: {', '.join(models.names())}")
        for key, values in table.scientific.items():
            for value in values:
                self.value(table.model, key, value, f"{where}.scientific")
            if len(set(map(repr, values))) != len(values):
                self.fail(f"{where}.scientific", f"{key} lists a value twice: {values}")
        for key, value in table.fixed.items():
            self.value(table.model, key, value, f"{where}.fixed")
        return Arm(table.model, {k: tuple(v) for k, v in table.scientific.items()}, dict(table.fixed))

    def fixed(self, fixed: dict[str, Any], arms: tuple[Arm, ...]) -> None:
        for key, value in fixed.items():
            owners = [arm.model for arm in arms if key in models.option_names(arm.model)]
            if not owners and key not in TRAIN_KEYS:
                self.fail("fixed", f"{key!r} is neither a training parameter nor an option of the study's models")
            for model in owners or [arm.model for arm in arms][:1] or ["capsnet"]:
                self.value(model, key, value, "fixed")

    def primary(self, table: schema.PrimaryTable, index: int, kind: str, arms: tuple[Arm, ...]) -> Primary:
        """A declared comparison must be one the report can answer with exactly one row per metric
        (and level): its values listed by the arms, and every other parameter the arms vary either
        named in `within` or left to a main effect."""
        where = f"primary[{index}]"
        (factor, (baseline, level)), = table.compare.items()
        for metric in table.metrics:
            if metric not in schema.KIND_METRICS[kind]:
                self.fail(f"{where}.metrics", f"{metric!r} is not measured by a {kind!r} study; "
                                              f"valid: {', '.join(schema.KIND_METRICS[kind]) or 'none'}")

        def varied(model: str) -> set[str]:
            values: dict[str, set] = {}
            for arm in arms:
                if arm.model == model:
                    for key, listed in arm.scientific.items():
                        values.setdefault(key, set()).update(map(repr, listed))
            return {key for key, seen in values.items() if len(seen) > 1}

        def scientific(model: str) -> set[str]:
            return {key for arm in arms if arm.model == model for key in arm.scientific}

        if factor == "model":
            for model in (baseline, level):
                if not any(arm.model == model for arm in arms):
                    self.fail(f"{where}.compare", f"model {model!r} has no [[arms]] entry")
            if level not in REFERENCE_MODELS or baseline in REFERENCE_MODELS:
                self.fail(f"{where}.compare", f"a comparison of models sets a capsule model ({', '.join(REFERENCE_MODELS)}) "
                                              f"at its defaults, second, against another model, first; got "
                                              f"[{baseline!r}, {level!r}]")
            shared = scientific(baseline) & scientific(level)
            for key in table.within:
                if key not in shared:
                    self.fail(f"{where}.within", f"{key!r} is not a scientific parameter of both {baseline!r} and "
                                                 f"{level!r}")
            # The capsule model's own options are held at its defaults; a shared parameter is paired.
            ambiguous = (varied(baseline) & shared) - set(table.within)
            involved = [baseline, level]
        else:
            involved = [table.model]
            if not any(arm.model == table.model for arm in arms):
                self.fail(f"{where}.model", f"{table.model!r} has no [[arms]] entry")
            listed = [v for arm in arms if arm.model == table.model for v in arm.scientific.get(factor, ())]
            if not listed:
                self.fail(f"{where}.compare", f"{factor!r} is not a scientific parameter of {table.model!r}")
            for value in (baseline, level):
                self.value(table.model, factor, value, f"{where}.compare")
                if not any(value == v for v in listed):
                    self.fail(f"{where}.compare", f"{factor} = {value!r} is not among the values the arms of "
                                                  f"{table.model!r} list: {listed}")
            for key in table.within:
                if key == factor or key not in scientific(table.model):
                    self.fail(f"{where}.within", f"{key!r} is not another scientific parameter of {table.model!r}")
            # Without `within` the main effect averages over the others; with it, it names them all.
            ambiguous = (varied(table.model) - {factor} - set(table.within)) if table.within else set()
        if ambiguous:
            self.fail(f"{where}.within", f"also name {', '.join(sorted(ambiguous))} (the arms vary "
                                         f"{'it' if len(ambiguous) == 1 else 'them'}): otherwise several rows "
                                         "answer the comparison")
        for key, value in table.within.items():
            for model in involved:
                if key in scientific(model):
                    self.value(model, key, value, f"{where}.within")
        return Primary(factor, baseline, level, tuple(table.metrics), table.model, dict(table.within))

    def distinct(self, primaries: tuple[Primary, ...]) -> tuple[Primary, ...]:
        """Each declared comparison once: a repeat would count one answer twice in Holm's family."""
        seen: dict[tuple, int] = {}
        for index, primary in enumerate(primaries):
            for metric in primary.metrics:
                key = (primary.factor, primary.baseline, primary.level, primary.model,
                       tuple(sorted(primary.within.items(), key=repr)), metric)
                if key in seen:
                    self.fail(f"primary[{index}]", f"repeats primary[{seen[key]}] for {metric!r}")
                seen[key] = index
        return primaries

    def nuisance(self, name: str, bounds: schema.NuisanceTable) -> Nuisance:
        if name not in TRAIN_KEYS:
            self.fail(f"nuisance.{name}", "only training parameters can be nuisance parameters")
        for value in (bounds.low, bounds.high):
            try:
                check_value(TrainConfig, name, float(value) if isinstance(value, int) else value)
            except ValueError as error:
                self.fail(f"nuisance.{name}", str(error))
        return Nuisance(name, float(bounds.low), float(bounds.high), bounds.log)

    def profile(self, profile: Profile, spec: StudySpec) -> None:
        where = f"profiles.{profile.name}"
        self.recipe(profile.recipe, spec, where)
        for model, recipe in profile.per_model.items():
            if not any(arm.model == model for arm in spec.arms):
                self.fail(f"{where}.per_model", f"{model!r} has no [[arms]] entry")
            self.recipe(recipe, spec, f"{where}.per_model.{model}")
        for model in profile.models or ():
            if not any(arm.model == model for arm in spec.arms):
                self.fail(f"{where}.models", f"{model!r} has no [[arms]] entry")
        self.grid(profile.grid, spec.arms, f"{where}.grid")
        for model, grid in profile.model_grid.items():
            arms = [arm for arm in spec.arms if arm.model == model]
            if not arms:
                self.fail(f"{where}.model_grid", f"{model!r} has no [[arms]] entry")
            self.grid(grid, arms, f"{where}.model_grid.{model}")
        self.sizes(profile, spec, where)
        if spec.kind in schema.CURVE_KINDS:
            for arm in spec.arms:
                recipe = {**spec.fixed, **arm.fixed, **profile.recipe, **profile.per_model.get(arm.model, {})}
                if not recipe.get("val_size"):
                    self.fail(where, f"a {spec.kind!r} study reads its curves on a validation split: "
                                     f"{arm.model!r} needs val_size > 0")
        if spec.nuisance and profile.nuisance_trials and not all(
                {**profile.recipe, **profile.per_model.get(arm.model, {})}.get("val_size") for arm in spec.arms):
            self.fail(where, "tuning nuisance parameters needs val_size > 0")

    def sizes(self, profile: Profile, spec: StudySpec, where: str) -> None:
        """Profiles whose results are reported (all but smoke, the tests' own) test an accuracy study
        on the full test set, and robustness studies on at least MIN_SUBSET images."""
        if profile.name == "smoke":
            return
        recipes = [spec.fixed, *(arm.fixed for arm in spec.arms), profile.recipe, *profile.per_model.values()]
        for recipe in recipes:
            size = recipe.get("test_size")
            if size is not None and spec.kind in ("accuracy", "multimnist"):
                self.fail(where, f"test_size {size}: a {spec.kind!r} study is tested on the whole test set")
            if size is not None and size < MIN_SUBSET:
                self.fail(where, f"test_size {size}: a test subset has at least {MIN_SUBSET} images")
        robustness = getattr(profile.settings, "affnist_size", None)
        if robustness is not None and robustness < MIN_SUBSET:
            self.fail(f"{where}.settings", f"affnist_size {robustness}: a robustness subset has at least "
                                        f"{MIN_SUBSET} images")

    def grid(self, grid: dict[str, tuple[Any, ...]], arms: list[Arm], where: str) -> None:
        """Values of scientific parameters (grid, model_grid): each key varied by one of `arms`, each value valid."""
        for key, values in grid.items():
            varying = [arm for arm in arms if key in arm.scientific]
            if not varying:
                self.fail(where, f"{key!r} is not a scientific parameter")
            for arm in varying:
                for value in values:
                    self.value(arm.model, key, value, where)

    def recipe(self, recipe: dict[str, Any], spec: StudySpec, where: str) -> None:
        """Training parameters a profile fixes (for every model, or for one)."""
        for key, value in recipe.items():
            if any(key in arm.scientific for arm in spec.arms):
                self.fail(where, f"{key!r} is a scientific parameter; restrict its values with grid instead")
            if key not in TRAIN_KEYS:
                self.fail(where, f"unknown key {key!r}; a profile sets seeds, models, grid, nuisance_trials, "
                                 f"per_model, model_grid, settings and training parameters ({', '.join(TRAIN_KEYS)})")
            if key == "bf16" and value == BF16_AUTO:
                continue
            try:
                check_value(TrainConfig, key, value)
            except ValueError as error:
                self.fail(where, str(error))

    def configs(self, spec: StudySpec) -> None:
        """Build every point's TrainConfig and model config once, so cross-field errors surface now;
        two arms that reach one configuration must agree on everything else."""
        for profile in spec.profiles:
            seen: dict[str, TrainConfig] = {}
            try:
                for point in spec.points(profile):
                    config = spec.train_config(point, profile, device="cpu")
                    models.make_config(config.model, **config.model_options)
                    seen[point.key] = config
                for index in range(len(spec.arms)):
                    self._same_as_first(spec, profile, index, seen)
            except ValueError as error:
                if isinstance(error, SpecError):
                    raise
                self.fail(f"profiles.{profile}", str(error))

    def _same_as_first(self, spec: StudySpec, profile: str, index: int, seen: dict[str, TrainConfig]) -> None:
        arm = spec.arms[index]
        chosen = spec.profile(profile)
        if chosen.models is not None and arm.model not in chosen.models:
            return
        grid = chosen.arm_grid(arm)
        names = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in names)):
            values = spec._all_scientific(index, dict(zip(names, combo)), profile)
            point = Point(arm.model, values, chosen.seeds[0], index)
            mine = spec.train_config(point, profile, device="cpu")
            first = seen[point.key]
            if mine != first:
                self.fail(f"arms[{index}]", f"reaches {point.config_key} like an earlier arm, but with other "
                                            "fixed parameters; give them the same ones or vary what differs")
