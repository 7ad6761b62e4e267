"""What a trial does once its configuration is known, per study kind.

- `accuracy`: train, then test on the clean test set.
- `affnist`: train the whole budget on expanded MNIST (40x40 canvas), recording at checkpoints the
  accuracy on a validation split (held out from the training images) and, at the same weights, on
  affNIST (the official files when present, else the generated affNIST-style set): a robustness
  curve, compared between models at equal validation accuracy by the report. The paper
  early-stopped on its test set; a checkpoint chosen on the test set makes the reported clean
  accuracy a selected, optimistic number, so nothing here is chosen by reading it.
- `rotation`: the same curve on 28x28, the robustness measures being the test set swept over
  rotation angles and horizontal shifts.
- `multimnist`: train a two-digit model on generated MultiMNIST; an example is right only when
  both digits are found (the paper's measure), with the per-digit accuracy beside it.
Each returns the metrics to store on the trial and, optionally, long-form rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

import models
from models.fields import ConfigError
from models.multimnist import MULTIMNIST_SIDE, digit_correct, predict_pair
from models.speed_paths import SpeedPlan
from studies.data import affnist, affnist_style, augment, multimnist
from studies.data.datasets import default_data_root
from studies.data.subsets import stratified_subset
from studies.spec.schema import AffnistSettings, Curves, MultiMNISTSettings, RotationSettings
from studies.spec.study import Profile, StudySpec
from studies.training.config import TrainConfig
from studies.training.curves import CurveRecorder, Measure, Schedule
from studies.training.devices import autocast, resolve_device
from studies.training.train import Split, SpeedSource, TrainResult, build_model, evaluate, load_splits, train


@dataclass
class TaskOutcome:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def objective(self) -> float:
        return float(self.metrics["test_error"])


@dataclass(frozen=True)
class TrainHooks:
    """What the engine hands to a task's training: the checkpoint path and where the CPU speed plan
    comes from (the study's choice for this machine: a `SpeedSource`, asked with the model)."""

    checkpoint: Path | None = None
    speed_plan: SpeedPlan | SpeedSource | None = None


Task = Callable[[StudySpec, Profile, TrainConfig, TrainHooks], TaskOutcome]
TASKS: dict[str, Task] = {}


def task(kind: str):
    def decorator(function: Task) -> Task:
        TASKS[kind] = function
        return function

    return decorator


def train_metrics(result: TrainResult) -> dict[str, Any]:
    """The metrics every trained trial stores, whatever its kind."""
    return {
        "test_accuracy": result.test_accuracy,
        "test_error": result.test_error,
        "train_seconds": result.train_seconds,
        "train_images_per_s": result.train_images_per_s,
        "params": result.params,
        "train_images": result.train_images,
        "images_seen": result.images_seen,
        "val_images": result.val_images,
        "val_accuracy": result.val_accuracy,
        "test_images": result.test_images,
        "epochs": len(result.history),
        "device": result.device,
        # Reductions split over threads add in another order with another count: stated with the numbers.
        "threads": torch.get_num_threads(),
        "torch_version": result.torch_version,
        "speed_plan": result.speed_plan,
        "history": result.history,
    }


@task("accuracy")
def accuracy_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    return TaskOutcome(metrics=train_metrics(train(config, checkpoint=hooks.checkpoint, speed_plan=hooks.speed_plan)))


# --- robustness along training, compared at equal clean accuracy -----------------------------

def curve_training(settings: Curves, config: TrainConfig, hooks: TrainHooks, splits: tuple[Split, Split | None, Split],
                   measure: Measure) -> tuple[torch.nn.Module, TrainResult, list[dict[str, Any]]]:
    """Train the whole budget, recording the validation accuracy and `measure` at checkpoints
    (studies/training/curves.py); returns the final model, the result and the curve's rows, the
    last of which is the final model with its clean test accuracy."""
    if splits[1] is None:
        raise ConfigError("a robustness curve needs a validation split (val_size > 0)")
    schedule = Schedule(settings.levels, settings.check_every, settings.dense_every, settings.dense_margin)
    recorder = CurveRecorder(schedule, splits[1], measure, splits[2], config.eval_batch_size, config.bf16)
    model = build_model(config).to(resolve_device(config.device))
    # The untrained model, read on validation (no randomness); a resumed run's state replaces it.
    recorder.start(model)
    result = train(config, None, model, hooks.checkpoint, splits, check=recorder, speed_plan=hooks.speed_plan)
    rows = recorder.rows
    if rows[-1]["test_accuracy"] is None:
        rows[-1]["test_accuracy"] = result.test_accuracy
    return model, result, rows


def curve_metrics(result: TrainResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a curve trial stores besides its rows: the training metrics and the end of the curve."""
    metrics = train_metrics(result)
    metrics.update(clean_accuracy=result.test_accuracy, val_accuracy=rows[-1]["val_accuracy"],
                   checkpoints=len(rows))
    return metrics


# --- affNIST ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RobustnessSet:
    split: Split
    name: str
    # What the set is made of (its recipe, or the official files' digest) and which subset: its
    # identity, the same on every machine.
    recipe: dict[str, Any]
    # The digest of the images as made here: for information only (a generated set's pixels may
    # round differently on another CPU or a GPU).
    output_sha256: str
    # Which official files were read, relative to the data root (information for the report, not
    # identity: the archive as downloaded and its extracted files are the same set); "" if generated.
    files: str = ""

    @property
    def identity(self) -> dict[str, Any]:
        """What must match for two trials to have been tested on the same set."""
        return {"robustness_set": self.name, **self.recipe}


_ROBUSTNESS_SETS: dict[tuple, RobustnessSet] = {}


def affnist_set(spec: StudySpec, profile: Profile, config: TrainConfig) -> RobustnessSet:
    """Official affNIST test files when present under the data root, else the generated set, or
    a class-stratified random subset of either (`affnist_size`, seeded by the split seed); loaded
    once per process and settings."""
    settings: AffnistSettings = profile.settings
    device = resolve_device(config.device)
    root = Path(config.data_root) if config.data_root else default_data_root()
    key = (str(root), settings.model_dump_json(), config.split_seed, str(device))
    if key in _ROBUSTNESS_SETS:
        return _ROBUSTNESS_SETS[key]
    official = affnist.find_split(root, "test")
    files = ""
    if official is not None:
        images, labels = affnist.load_split(official)
        name = "affNIST"
        recipe = {"source": "official affNIST test files",
                  "source_sha256": affnist_style.source_fingerprint(images, labels)}
        folder = official.directory.relative_to(root)
        files = official.found if folder == Path(".") else f"{folder}/{official.found}"
        tqdm.write(f"affnist: testing on the official affNIST test set, {files} in {root} "
                   f"({labels.shape[0]} images)")
    else:
        # Said before anything trains, not only in REPORT.md: a user who meant to supply the files
        # learns now that they were not found.
        tqdm.write(f"affnist: no official affNIST test files in {root / affnist.FOLDER} (test.mat.zip or "
                   f"test_batches.zip from {affnist.PAGE}, or the .mat files they hold); testing on the "
                   "generated affNIST-style set instead")
        ranges = affnist_style.AffineRanges(**settings.ranges.model_dump())
        generated = affnist_style.mnist_affnist_style(
            ranges, copies=settings.copies, seed=settings.generator_seed, device=device,
            root=config.data_root and Path(config.data_root),
        )
        images, labels = generated.images, generated.labels
        name = affnist_style.DESCRIPTION
        recipe = {"ranges": ranges.as_dict(), "copies": generated.copies, "generator_seed": generated.seed,
                  "generator_version": affnist_style.GENERATOR_VERSION, "canvas": generated.canvas,
                  "source_sha256": generated.source_sha256}
    if settings.affnist_size and settings.affnist_size < labels.shape[0]:
        index = stratified_subset(labels, settings.affnist_size, config.split_seed)
        images, labels = images[index], labels[index]
        recipe["subset"] = {"images": settings.affnist_size, "stratified_seed": config.split_seed}
    recipe["images"] = int(labels.shape[0])
    output = affnist_style.source_fingerprint(images.cpu(), labels.cpu())
    chosen = RobustnessSet(Split(images.unsqueeze(1).to(device), labels.to(device)), name, recipe, output, files)
    _ROBUSTNESS_SETS[key] = chosen
    return chosen


@task("affnist")
def affnist_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: AffnistSettings = profile.settings
    splits = load_splits(config, resolve_device(config.device))
    robustness = affnist_set(spec, profile, config)

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        return {"affnist_accuracy": evaluate(model, robustness.split, config.eval_batch_size, bf16=config.bf16)}

    _, result, rows = curve_training(settings, config, hooks, splits, measure)
    metrics = curve_metrics(result, rows)
    metrics.update(affnist_accuracy=rows[-1]["affnist_accuracy"],
                   robustness_set=robustness.name,
                   robustness_details={**robustness.recipe, "output_sha256": robustness.output_sha256,
                                       **({"files": robustness.files} if robustness.files else {})})
    return TaskOutcome(metrics=metrics, rows=rows)


# --- rotation and translation sweeps ------------------------------------------------------

def _distinct_edit(transform: str, amount: float) -> tuple[str, float] | None:
    """The edit a sweep amount makes, once per distinct edit: None for no change (rotation by a
    multiple of 360 degrees, no shift); rotations in (-180, 180], so -180 and 180 are one edit."""
    if transform == "rotation":
        turned = float(amount) % 360.0
        turned = turned - 360.0 if turned > 180.0 else turned
        return None if turned == 0.0 else ("rotation", turned)
    return None if int(amount) == 0 else ("translation", int(amount))


def _edit_function(edit: tuple[str, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    transform, amount = edit
    if transform == "rotation":
        def rotated(images):
            return augment.rotate(images, torch.full((images.shape[0],), amount, device=images.device))
        return rotated

    def shifted(images):
        offsets = torch.full((images.shape[0],), int(amount), device=images.device)
        return augment.shift(images, torch.zeros_like(offsets), offsets, abs(int(amount)))
    return shifted


def sweep(model: torch.nn.Module, split: Split, config: TrainConfig,
          settings: RotationSettings) -> tuple[list[dict[str, Any]], float]:
    """Accuracy on the test split at every rotation angle and horizontal shift (zero fill), and on
    the unchanged split (the clean test accuracy); each distinct edit is evaluated once."""
    requested = [("rotation", a) for a in settings.angles] + [("translation", s) for s in settings.shifts]
    accuracies = {None: evaluate(model, split, config.eval_batch_size, bf16=config.bf16)}
    for transform, amount in requested:
        edit = _distinct_edit(transform, amount)
        if edit not in accuracies:
            accuracies[edit] = evaluate(model, split, config.eval_batch_size, _edit_function(edit), bf16=config.bf16)
    rows = [{"transform": transform, "amount": amount, "accuracy": accuracies[_distinct_edit(transform, amount)]}
            for transform, amount in requested]
    return rows, accuracies[None]


@task("rotation")
def rotation_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: RotationSettings = profile.settings
    splits = load_splits(config, resolve_device(config.device))

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        rows, clean = sweep(model, splits[2], config, settings)
        return {"test_accuracy": clean, "sweep": rows}

    _, result, rows = curve_training(settings, config, hooks, splits, measure)
    return TaskOutcome(metrics=curve_metrics(result, rows), rows=rows)


# --- MultiMNIST: two overlapping digits ------------------------------------------------------

def multimnist_splits(settings: MultiMNISTSettings, config: TrainConfig,
                      device: torch.device) -> tuple[Split, Split, float]:
    """Train and test splits of generated MultiMNIST (train_size / test_size source digits of each
    MNIST split, class-stratified at random), and the test set's mean bounding-box overlap."""
    sets = []
    for split, pairs, seed_offset, limit in (("train", settings.train_pairs_per_digit, 0, config.train_size),
                                             ("test", settings.test_pairs_per_digit, 1, config.test_size)):
        # Another seed for the test set, so the two splits do not share a random stream.
        sets.append(multimnist.mnist_multimnist(split, pairs, settings.generator_seed + seed_offset, device,
                                                config.data_root, limit, subset_seed=config.split_seed))
    as_split = [Split(s.images.unsqueeze(1).to(device), s.labels.to(device), s.targets.to(device)) for s in sets]
    return as_split[0], as_split[1], multimnist.mean_overlap(sets[1])


@torch.inference_mode()
def pair_figure_rows(model, split: Split, count: int, bf16: bool) -> list[dict[str, Any]]:
    """The first `count` test pairs with the model's prediction and its two reconstructions (each
    digit from its own capsule), as uint8 lists for the report's figure."""
    if count == 0:
        return []
    model.eval()
    images = split.images[:count].float().div(255.0)
    with autocast(images.device, bf16):
        output = model(images)
    predicted = predict_pair(output.scores.float())
    rows = []
    for i in range(images.shape[0]):
        row = {"index": i, "labels": split.labels[i].tolist(), "predicted": predicted[i].tolist(),
               "input": split.images[i, 0].tolist()}
        if output.reconstruction is not None:
            recon = (output.reconstruction[i].float().clamp(0, 1) * 255).round().to(torch.uint8)
            row["reconstructions"] = [recon[k, 0].tolist() for k in range(recon.shape[0])]
        rows.append(row)
    return rows


@task("multimnist")
def multimnist_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: MultiMNISTSettings = profile.settings
    if config.augmentation != "none" or config.canvas:
        raise ConfigError("MultiMNIST trains on the generated pairs as they are: augmentation = \"none\", no canvas")
    device = resolve_device(config.device)
    train_split, test_split, overlap = multimnist_splits(settings, config, device)
    torch.manual_seed(config.seed)
    model = models.create(config.model, in_channels=1, input_size=MULTIMNIST_SIDE, **config.model_options)
    result = train(config, None, model, hooks.checkpoint, (train_split, None, test_split),
                   speed_plan=hooks.speed_plan)
    digits = torch.zeros((), dtype=torch.long, device=device)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(test_split), config.eval_batch_size):
            images = test_split.images[start : start + config.eval_batch_size].float().div(255.0)
            with autocast(device, config.bf16):
                scores = model(images).scores.float()
            digits += digit_correct(predict_pair(scores), test_split.labels[start : start + config.eval_batch_size]).sum()
    digit_accuracy = digits.item() / (2 * len(test_split))
    metrics = train_metrics(result)  # test_accuracy: both digits right, the paper's measure
    metrics.update(digit_accuracy=digit_accuracy, digit_error=1.0 - digit_accuracy, mean_overlap=overlap,
                   train_pairs=len(train_split), test_pairs=len(test_split))
    return TaskOutcome(metrics=metrics, rows=pair_figure_rows(model, test_split, settings.figure_pairs, config.bf16))


# --- what a trial's identity depends on besides its training configuration -------------------

def task_identity(spec: StudySpec, profile: Profile, config: TrainConfig) -> dict[str, Any]:
    """The kind's settings, and for affNIST which robustness set (official or generated, by its
    recipe and source digest, never by its floating-point output): changing any of them retrains
    instead of mixing old results in, and workers on different CPUs or GPUs see the same points."""
    identity: dict[str, Any] = {"settings": json.loads(profile.settings.model_dump_json())}
    if spec.kind == "affnist":
        identity["robustness"] = affnist_set(spec, profile, config).identity
    return identity


def preflight(spec: StudySpec, profile: Profile, config: TrainConfig) -> dict[str, Any]:
    """Load what every trial will need once, so bad input fails before anything is stored; returns
    the task identity (`task_identity`)."""
    from studies.data import datasets

    datasets.prepare(spec.dataset, config.data_root)
    return task_identity(spec, profile, config)
