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

This module is the glue between a spec's settings and the layers below: the robustness sets and
the sweeps' edits are data (studies/data/robustness_sets.py), the curve and its checkpoints are
training (studies/training/curves.py, studies/training/sweep.py), and the training loop counts an
example right by the rule its split carries (studies/data/splits.py), MultiMNIST's pair rule
being given here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import models
from models.fields import ConfigError
from models.multimnist import MULTIMNIST_SIDE, digit_correct, pair_correct, predict_pair
from models.speed_paths import SpeedPlan
from studies.data import affnist_style, multimnist
from studies.data.datasets import default_data_root
from studies.data.robustness_sets import LastRobustnessSet, RobustnessSet
from studies.data.robustness_sets import affnist_set as make_affnist_set
from studies.spec.schema import AffnistSettings, Curves, MultiMNISTSettings, RotationSettings
from studies.spec.study import Profile, StudySpec
from studies.training.config import TrainConfig
from studies.training.curves import Measure, Schedule, train_curve
from studies.training.devices import autocast, resolve_device
from studies.training.loop import Split, SpeedSource, TrainResult, evaluate, load_splits, train
from studies.training.sweep import sweep


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
    """`train_curve` (studies/training/curves.py) on the spec's checkpoint schedule."""
    schedule = Schedule(settings.levels, settings.check_every, settings.dense_every, settings.dense_margin)
    return train_curve(config, schedule, splits, measure, hooks.checkpoint, hooks.speed_plan)


def curve_metrics(result: TrainResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a curve trial stores besides its rows: the training metrics and the end of the curve."""
    metrics = train_metrics(result)
    metrics.update(clean_accuracy=result.test_accuracy, val_accuracy=rows[-1]["val_accuracy"],
                   checkpoints=len(rows))
    return metrics


# --- affNIST ------------------------------------------------------------------------------------

# A study's trials, and its preflight before them, all test on one robustness set: it is made once
# and kept on the device while they run, until another set is asked for (or the holder is cleared).
ROBUSTNESS_SETS = LastRobustnessSet()


def affnist_set(spec: StudySpec, profile: Profile, config: TrainConfig) -> RobustnessSet:
    """The profile's affNIST set (studies/data/robustness_sets.py): the official test files when
    present under the data root, else the generated set, or a class-stratified random subset of
    either (`affnist_size`, seeded by the split seed)."""
    settings: AffnistSettings = profile.settings
    device = resolve_device(config.device)
    ranges = affnist_style.AffineRanges(**settings.ranges.model_dump())
    made_from = (ranges, settings.copies, settings.generator_seed, settings.affnist_size, config.split_seed)
    # Keyed by the data root as resolved: a changed default root may hold other files.
    root = Path(config.data_root) if config.data_root else default_data_root()
    return ROBUSTNESS_SETS.get((str(root), *made_from, str(device)),
                               lambda: make_affnist_set(config.data_root, *made_from, device))


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

@task("rotation")
def rotation_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: RotationSettings = profile.settings
    splits = load_splits(config, resolve_device(config.device))

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        rows, clean = sweep(model, splits[2], settings.angles, settings.shifts, config.eval_batch_size, config.bf16)
        return {"test_accuracy": clean, "sweep": rows}

    _, result, rows = curve_training(settings, config, hooks, splits, measure)
    return TaskOutcome(metrics=curve_metrics(result, rows), rows=rows)


# --- MultiMNIST: two overlapping digits ------------------------------------------------------

def both_digits_found(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool (B,): both digits of the pair among the two highest scores, in either order: the paper's
    measure, and the rule the MultiMNIST splits carry (`Split.correct`)."""
    return pair_correct(predict_pair(scores), labels)


def each_digit_found(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool (B, 2): whether each digit of the pair is among the two highest scores; evaluated, the
    per-digit accuracy."""
    return digit_correct(predict_pair(scores.float()), labels)


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
    as_split = [Split(s.images.unsqueeze(1).to(device), s.labels.to(device), s.targets.to(device),
                      correct=both_digits_found) for s in sets]
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
    digit_accuracy = evaluate(model, dataclasses.replace(test_split, correct=each_digit_found),
                              config.eval_batch_size, bf16=config.bf16)
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
