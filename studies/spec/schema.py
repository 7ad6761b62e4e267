"""The shape of a spec file, declared once: pydantic models (strict: no "3" for 3, finite numbers,
no unknown keys) for the file, its arms, nuisance ranges and profiles, and one settings model per
study kind. Values of training and model parameters are checked against the annotations of
TrainConfig and the model configs (models/fields.py) by `studies.spec.study`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval, MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

from studies.data.datasets import DATASETS

PROFILES = ("smoke", "quick", "standard", "paper")
Dataset = Literal[tuple(DATASETS)]
ProfileName = Literal[PROFILES]
Count = Annotated[int, Ge(1)]
Fraction = Annotated[float, Interval(gt=0, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


Level = Annotated[float, Interval(gt=0, lt=1)]


class Curves(Strict):
    """Robustness as a curve, compared at equal clean accuracy. Every arm trains the profile's whole
    budget; along the way, at checkpoints, the validation accuracy is read and, at the same weights,
    the robustness measures (recorded, never looked at by the schedule). The untrained model is the
    first checkpoint; then one comes every `check_every` optimiser steps, every `dense_every` steps
    while the last validation reading is within `dense_margin` of one of the `levels`, and at the
    end of every epoch; the schedule sees validation readings only. At each level (a validation
    accuracy) the report interpolates every seed's robustness-versus-validation curve between the two
    checkpoints that bracket the level (the first crossing), and compares the models there, paired by
    seed. The clean test accuracy is measured at those bracketing checkpoints and at the end of the
    budget (the rotation study measures it at every checkpoint: it is its sweeps' unchanged point)."""

    levels: Annotated[tuple[Level, ...], MinLen(1)]
    check_every: Count = 100
    dense_every: Count = 20
    dense_margin: Annotated[float, Interval(ge=0, le=1)] = 0.02

    @model_validator(mode="after")
    def _increasing(self):
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])):
            raise ValueError(f"levels must increase, got {list(self.levels)}")
        if self.dense_every > self.check_every:
            raise ValueError(f"dense_every {self.dense_every} exceeds check_every {self.check_every}")
        return self


class AffineRangesTable(Strict):
    rotation_deg: Annotated[float, Interval(ge=0, le=180)] = 20.0
    shear: Annotated[float, Ge(0)] = 0.2
    scale_min: Annotated[float, Gt(0)] = 0.8
    scale_max: Annotated[float, Gt(0)] = 1.2

    @model_validator(mode="after")
    def _ordered(self):
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min {self.scale_min} exceeds scale_max {self.scale_max}")
        return self


class NoSettings(Strict):
    pass


class AffnistSettings(Curves):
    # The generated set (used without the official files): ranges, copies per test digit, seed.
    ranges: AffineRangesTable = AffineRangesTable()
    copies: Count = 1
    generator_seed: Annotated[int, Ge(0)] = 0
    # Robustness images tested: a class-stratified random subset of N (seeded by the profile's
    # split_seed); None: all.
    affnist_size: Count | None = None


class RotationSettings(Curves):
    angles: Annotated[tuple[Annotated[float, Interval(ge=-360, le=360)], ...], MinLen(1)] = tuple(range(-180, 181, 15))
    shifts: Annotated[tuple[Annotated[int, Interval(ge=-27, le=27)], ...], MinLen(1)] = tuple(range(-6, 7, 2))


class MultiMNISTSettings(Strict):
    # Generated pairs per source digit (the paper: 1000, i.e. 60M training images); the profile's
    # train_size / test_size limit how many source digits of each split are used.
    train_pairs_per_digit: Count = 10
    test_pairs_per_digit: Count = 1
    generator_seed: Annotated[int, Ge(0)] = 0
    # Test pairs whose reconstructions the report draws (the paper's Figure 5).
    figure_pairs: Annotated[int, Interval(ge=0, le=16)] = 4


KIND_SETTINGS: dict[str, type[Strict]] = {
    "accuracy": NoSettings,
    "affnist": AffnistSettings,
    "rotation": RotationSettings,
    "multimnist": MultiMNISTSettings,
    "throughput": NoSettings,
}
Kind = Literal[tuple(KIND_SETTINGS)]
# What a study kind measures on every trial, by the trials table's column: what a primary
# comparison may compare.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "accuracy": ("test_error",),
    "affnist": ("affnist_accuracy", "test_accuracy"),
    "rotation": ("rotation_auc", "translation_auc", "test_accuracy"),
    "multimnist": ("test_error",),
    "throughput": (),
}
# Kinds whose models are compared along curves at stated validation accuracies.
CURVE_KINDS = ("affnist", "rotation")


class ArmTable(Strict):
    model: str
    scientific: dict[str, Annotated[list[Any], MinLen(1)]] = {}
    fixed: dict[str, Any] = {}


class PrimaryTable(Strict):
    """A question the study exists to answer, declared before anything is trained: one scientific
    parameter's two values within `model` (`compare = { routing_iters = [1, 3] }`), or two models
    (`compare = { model = ["cnn_pool", "capsnet"] }`, the model at its defaults), the baseline
    first, optionally `within` given values of other scientific parameters, on each of `metrics`.
    The report lists every primary comparison among its findings, whatever its sign, with Holm's
    adjustment over the study's primary family; every other comparison is exploratory."""

    model: str | None = None
    compare: dict[str, Annotated[list[Any], MinLen(2), MaxLen(2)]]
    within: dict[str, Any] = {}
    metrics: Annotated[list[str], MinLen(1)]

    @model_validator(mode="after")
    def _one_comparison(self):
        if len(self.compare) != 1:
            raise ValueError(f"compare names exactly one parameter (or model), got {sorted(self.compare)}")
        (factor, values), = self.compare.items()
        if repr(values[0]) == repr(values[1]):
            raise ValueError(f"compare.{factor}: the two values are the same: {values}")
        if factor == "model" and self.model is not None:
            raise ValueError("compare.model compares two models: it takes no `model` key")
        if factor != "model" and self.model is None:
            raise ValueError(f"compare.{factor}: say which model's parameter it is (model = ...)")
        return self


class NuisanceTable(Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class ProfileTable(BaseModel):
    """The budget of one kind of machine. Besides the keys below, a profile may set any training
    parameter (train_size, epochs, batch_size, lr, bf16, ...; checked by `studies.spec.study`):
    they are its fixed parameters, printed beside every table it produces."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    seeds: Annotated[list[Annotated[int, Ge(0)]], MinLen(1)]
    models: Annotated[list[str], MinLen(1)] | None = None
    grid: dict[str, Annotated[list[Any], MinLen(1)]] = {}
    nuisance_trials: Annotated[int, Ge(0)] = 0
    # Training parameters for one model's trials only, over the profile's own (e.g. per_model =
    # { cnn_pool = { eval_batch_size = 100 } }). One that changes the budget (epochs, train_size,
    # batch_size) makes that model's comparisons "unequal budgets": reported, never a finding.
    per_model: dict[str, dict[str, Any]] = {}
    # One model's values of scientific parameters, in place of `grid`'s for that model (e.g. model_grid
    # = { cnn_pool = { augmentation = ["shift2"] } } keeps the augmentation comparison for CapsNet only).
    model_grid: dict[str, dict[str, Annotated[list[Any], MinLen(1)]]] = {}
    # The study kind's settings for this profile, over the spec's [settings].
    settings: dict[str, Any] = {}

    @model_validator(mode="after")
    def _distinct_seeds(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]


class SpecFile(Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    # Python modules imported before the arms are read, e.g. one that registers the user's own
    # model with `models.register` (found beside the spec file or on the Python path).
    imports: list[ModuleName] = []
    title: str | None = None
    kind: Kind = "accuracy"
    dataset: Dataset = "mnist"
    # The datasets the study's question makes sense on (default: every dataset).
    datasets: Annotated[list[Dataset], MinLen(1)] | None = None
    fixed: dict[str, Any] = {}
    arms: list[ArmTable] = []
    nuisance: dict[str, NuisanceTable] = {}
    primary: list[PrimaryTable] = []
    profiles: Annotated[dict[ProfileName, ProfileTable], MinLen(1)]
    settings: dict[str, Any] = {}


def first_problem(error: ValidationError) -> str:
    """One line: where (as a dotted key path) and what, for the first problem pydantic found."""
    problem = error.errors()[0]
    parts = [str(part) for part in problem["loc"]]
    is_key = parts[-1:] == ["[key]"]  # the key of a table is wrong, not its value
    where = ".".join(parts[:-1] if is_key else parts)
    message = problem["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if problem["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if problem["type"] == "missing":
        return f"{where}: required key missing"
    if problem["type"] == "value_error":
        return f"{where}: {message}" if where else message
    subject = "key" if is_key else "value"
    return f"{where}: {subject} {problem.get('input')!r}: {message}" if where else message


def kind_settings(kind: str, values: dict[str, Any]) -> Strict:
    """The validated settings of a study kind (ValidationError on a bad one)."""
    return KIND_SETTINGS[kind].model_validate(values)


def merged_settings(kind: str, base: dict[str, Any], overrides: dict[str, Any]) -> Strict:
    """A profile's `settings` over the spec's [settings], one level deep for tables."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return kind_settings(kind, _tuples(merged))


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value

