"""What a trial does once its configuration is known, per study kind.

- `accuracy`: train, then test on the clean test set.
- `affnist`: train on expanded MNIST (40x40 canvas); the first epoch whose clean
  expanded-MNIST test accuracy reaches the profile's target is the checkpoint tested on
  affNIST (official files when present, else the generated affNIST-style set), so models are
  compared at matched clean accuracy.
- `rotation`: train on 28x28, then sweep the test set over rotation angles and shifts.
Each returns the metrics to store on the trial and, optionally, long-form rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from studies.data import affnist, affnist_style, augment
from studies.data.datasets import default_data_root
from studies.spec.study import Profile, StudySpec
from studies.training.config import TrainConfig
from studies.training.devices import resolve_device
from studies.training.train import Split, StopTraining, build_model, evaluate, load_splits, train


@dataclass
class TaskOutcome:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def objective(self) -> float:
        return float(self.metrics["test_error"])


@dataclass(frozen=True)
class TrainHooks:
    """What the engine hands to a task's training: the checkpoint path."""

    checkpoint: Path | None = None


Task = Callable[[StudySpec, Profile, TrainConfig, TrainHooks], TaskOutcome]
TASKS: dict[str, Task] = {}


def task(kind: str):
    def decorator(function: Task) -> Task:
        TASKS[kind] = function
        return function

    return decorator


def train_metrics(result) -> dict[str, Any]:
    """The metrics every trained trial stores, whatever its kind."""
    return {
        "test_accuracy": result.test_accuracy,
        "test_error": result.test_error,
        "train_seconds": result.train_seconds,
        "train_images_per_s": result.train_images_per_s,
        "params": result.params,
        "train_images": result.train_images,
        "test_images": result.test_images,
        "epochs": len(result.history),
        "device": result.device,
        "torch_version": result.torch_version,
        "history": result.history,
    }


@task("accuracy")
def accuracy_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    return TaskOutcome(metrics=train_metrics(train(config, checkpoint=hooks.checkpoint)))


# --- affNIST at matched clean accuracy ------------------------------------------------------

@dataclass(frozen=True)
class RobustnessSet:
    split: Split
    name: str
    details: dict[str, Any]


def affnist_set(spec: StudySpec, profile: Profile, config: TrainConfig) -> RobustnessSet:
    """Official affNIST test files when present under the data root, else the generated set."""
    device = resolve_device(config.device)
    root = Path(config.data_root) if config.data_root else default_data_root()
    size = profile.extra.get("affnist_size")
    if affnist.find_affnist(root) is not None:
        images, labels = affnist.load_affnist(root, "test")
        name, details = "affNIST", {"source": "official affNIST test files"}
    else:
        ranges = affnist_style.AffineRanges(**spec.settings.get("ranges", {}))
        generated = affnist_style.mnist_affnist_style(
            ranges, copies=int(spec.settings.get("copies", 1)), seed=int(spec.settings.get("generator_seed", 0)),
            device=device, root=config.data_root and Path(config.data_root),
        )
        images, labels = generated.images, generated.labels
        name, details = affnist_style.DESCRIPTION, {
            "ranges": ranges.as_dict(), "copies": generated.copies, "generator_seed": generated.seed,
        }
    if size:
        images, labels = images[:size], labels[:size]
    details["images"] = int(labels.shape[0])
    return RobustnessSet(Split(images.unsqueeze(1).to(device), labels.to(device)), name, details)


@task("affnist")
def affnist_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    target = float(profile.extra.get("target_accuracy", spec.settings.get("target_accuracy", 0.992)))
    splits = load_splits(config, resolve_device(config.device))
    clean_test = splits[2]
    robustness = affnist_set(spec, profile, config)
    matched: dict[str, Any] = {}

    def check_target(record, model):
        clean = evaluate(model, clean_test, config.eval_batch_size, bf16=config.bf16)
        record["clean_accuracy"] = clean
        if clean >= target:
            matched.update(epoch=record["epoch"], clean_accuracy=clean,
                           affnist_accuracy=evaluate(model, robustness.split, config.eval_batch_size, bf16=config.bf16))
            raise StopTraining

    model = build_model(config)
    result = train(config, check_target, model, hooks.checkpoint, splits)
    metrics = train_metrics(result)
    metrics.update(
        target_accuracy=target,
        reached_target=bool(matched),
        matched_epoch=matched.get("epoch"),
        clean_accuracy=matched.get("clean_accuracy", result.test_accuracy),
        # Only a checkpoint at the target is compared; the final model of one that never got
        # there is measured too, but reported apart.
        affnist_accuracy=matched.get("affnist_accuracy"),
        unmatched_affnist_accuracy=None if matched else evaluate(
            model, robustness.split, config.eval_batch_size, bf16=config.bf16
        ),
        robustness_set=robustness.name,
        robustness_details=robustness.details,
    )
    return TaskOutcome(metrics=metrics)


PREFLIGHTS: dict[str, Callable[[StudySpec, Profile, TrainConfig], object]] = {"affnist": affnist_set}


def preflight(spec: StudySpec, profile: Profile, config: TrainConfig) -> None:
    """Load what every trial will need once, so bad input fails before anything is stored."""
    from studies.data import datasets

    datasets.prepare(spec.dataset, config.data_root)
    if spec.kind in PREFLIGHTS:
        PREFLIGHTS[spec.kind](spec, profile, config)


# --- rotation and translation sweeps ------------------------------------------------------

def _sweep(model, split: Split, batch_size: int, transform: str, amounts: list[float]) -> list[dict[str, Any]]:
    rows = []
    for amount in amounts:
        if transform == "rotation":
            def edit(images, amount=amount):
                return augment.rotate(images, torch.full((images.shape[0],), float(amount), device=images.device))
        else:
            def edit(images, amount=amount):
                offsets = torch.full((images.shape[0],), int(amount), device=images.device)
                return augment.shift(images, torch.zeros_like(offsets), offsets, abs(int(amount)))
        rows.append({"transform": transform, "amount": amount, "accuracy": evaluate(model, split, batch_size, edit)})
    return rows


@task("rotation")
def rotation_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    angles = list(spec.settings.get("angles", range(-180, 181, 15)))
    shifts = list(spec.settings.get("shifts", range(-6, 7, 2)))
    angles = list(profile.extra.get("angles", angles))
    shifts = list(profile.extra.get("shifts", shifts))
    splits = load_splits(config, resolve_device(config.device))
    model = build_model(config)
    result = train(config, None, model, hooks.checkpoint, splits)
    test = splits[2]
    rows = _sweep(model, test, config.eval_batch_size, "rotation", angles)
    rows += _sweep(model, test, config.eval_batch_size, "translation", shifts)
    return TaskOutcome(metrics=train_metrics(result), rows=rows)
