"""What a trial does once its configuration is known, per study kind.

- `accuracy`: train, then test on the clean test set.
- `affnist`: train on expanded MNIST (40x40 canvas) until the validation split (held out from the
  training images) reaches the profile's target accuracy, checked every few steps; that model is
  tested on the clean expanded-MNIST test set and on affNIST (the official files when present,
  else the generated affNIST-style set), so models are compared at matched clean accuracy. The
  paper early-stopped on its test set; choosing the checkpoint on the test set would make the
  reported clean accuracy an optimistic, selected number, so we never do.
- `rotation`: train on 28x28 (to the same kind of matched validation accuracy when the profile
  sets a target), then sweep the test set over rotation angles and horizontal shifts.
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

import models
from models.fields import ConfigError
from models.multimnist import MULTIMNIST_SIDE, digit_correct, predict_pair
from studies.data import affnist, affnist_style, augment, multimnist
from studies.data.datasets import default_data_root
from studies.spec.schema import AffnistSettings, Matching, MultiMNISTSettings, RotationSettings
from studies.spec.study import Profile, StudySpec
from studies.training.config import TrainConfig
from studies.training.devices import autocast, resolve_device
from studies.training.train import (
    Progress,
    Split,
    StopTraining,
    TrainResult,
    build_model,
    evaluate,
    load_splits,
    train,
)


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
        "test_images": result.test_images,
        "epochs": len(result.history),
        "device": result.device,
        # Reductions split over threads add in another order with another count: stated with the numbers.
        "threads": torch.get_num_threads(),
        "torch_version": result.torch_version,
        "history": result.history,
    }


@task("accuracy")
def accuracy_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    return TaskOutcome(metrics=train_metrics(train(config, checkpoint=hooks.checkpoint)))


# --- training to a matched clean accuracy -------------------------------------------------------

class MatchTarget:
    """A StepCheck: stop training at the first step whose validation accuracy reaches the target.

    The weights after every step are copied into device buffers until the next check (every
    `check_every` steps). Validation is read at a check once the training accuracy since the
    previous one is within `screen_margin` of the target (free to compute; early in training it is
    far below) and from then on at every check. When a check reaches the target, the kept steps
    are validated oldest first and the earliest that reaches it is the match, its weights put back.
    So the match is the one a validation after every step would find (bar a crossing inside an
    interval whose check fell short), at the cost of at most `check_every - 1` extra evaluations,
    once, and of `check_every` copies of the weights in device memory (about 54 MB each for
    CapsNet at 40x40). With `match = "nearest"` the last step read below the target (the one
    just before the first at it) is kept too, and whichever of the two reads nearer the target is
    the match (the one at the target on a tie). The trial's images_seen and train_seconds count up
    to the check that stopped training; `matched_images` is the match's."""

    def __init__(self, settings: Matching, val: Split, config: TrainConfig):
        self.every, self.target, self.margin = settings.check_every, settings.target_accuracy, settings.screen_margin
        self.val, self.config = val, config
        self.evaluations = 0
        self.last_val: float | None = None
        self.matched: dict[str, Any] | None = None
        self.watching = False  # the screen has opened: validation is read at every check
        self.nearest = settings.match == "nearest"
        self.slots: list[dict[str, torch.Tensor]] = []  # reused buffers, one per step of an interval
        self.kept: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        # "nearest": the last step validated below the target, and a copy of its weights.
        self.below: dict[str, Any] | None = None
        self.below_weights: dict[str, torch.Tensor] = {}

    def after_step(self, step: int, images: int, model: torch.nn.Module) -> None:
        if self.every == 1:
            return  # every step is checked anyway
        state = model.state_dict()
        if len(self.kept) == len(self.slots):  # at most `every` slots: each check empties `kept`
            self.slots.append({name: torch.empty_like(value) for name, value in state.items()})
        weights = self.slots[len(self.kept)]
        for name, value in state.items():
            weights[name].copy_(value)
        self.kept.append((step, images, weights))

    def state_dict(self) -> dict[str, Any]:
        # Saved at an epoch's end, where the epoch's last check has just emptied `kept`.
        return {"watching": self.watching, "evaluations": self.evaluations, "last_val": self.last_val,
                "below": self.below, "below_weights": self.below_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watching, self.evaluations, self.last_val = state["watching"], state["evaluations"], state["last_val"]
        self.below, self.below_weights = state["below"], state["below_weights"]

    def _remember_below(self, step: int, images: int, accuracy: float, weights: dict[str, torch.Tensor]) -> None:
        if self.nearest:
            self.below = {"step": step, "images": images, "val_accuracy": accuracy}
            if not self.below_weights:
                self.below_weights = {name: torch.empty_like(value) for name, value in weights.items()}
            for name, value in weights.items():
                self.below_weights[name].copy_(value)

    def _validate(self, model: torch.nn.Module) -> float:
        self.evaluations += 1
        self.last_val = evaluate(model, self.val, self.config.eval_batch_size, bf16=self.config.bf16)
        return self.last_val

    def __call__(self, progress: Progress) -> None:
        kept, self.kept = self.kept, []
        self.watching = self.watching or progress.train_accuracy >= self.target - self.margin
        if not self.watching:
            return
        if self._validate(progress.model) < self.target:
            self._remember_below(progress.step, progress.images, self.last_val, progress.model.state_dict())
            return
        self.matched = {"step": progress.step, "images": progress.images, "val_accuracy": self.last_val}
        for step, images, weights in kept[:-1]:  # the last one is the weights just validated
            progress.model.load_state_dict(weights)
            if self._validate(progress.model) >= self.target:
                self.matched = {"step": step, "images": images, "val_accuracy": self.last_val}
                break
            self._remember_below(step, images, self.last_val, weights)
        else:
            if kept:
                progress.model.load_state_dict(kept[-1][2])
            self.last_val = self.matched["val_accuracy"]
        below = self.below
        if below is not None and self.target - below["val_accuracy"] < self.matched["val_accuracy"] - self.target:
            progress.model.load_state_dict(self.below_weights)
            self.matched, self.last_val = dict(below), below["val_accuracy"]
        raise StopTraining


def matched_training(settings: Matching, config: TrainConfig, hooks: TrainHooks,
                     splits: tuple[Split, Split | None, Split]) -> tuple[torch.nn.Module, TrainResult, dict[str, Any]]:
    """Train until the validation split reaches `settings.target_accuracy` (or the budget ends);
    the model returned is the one at the match. The test split is evaluated by `train` after
    training stopped, never before the match."""
    if splits[1] is None:
        raise ConfigError("matching clean accuracy needs a validation split (val_size > 0)")
    matcher = MatchTarget(settings, splits[1], config)
    model = build_model(config)
    result = train(config, None, model, hooks.checkpoint, splits, check=matcher)
    matched = matcher.matched or {}
    final_val = matcher.last_val
    if not matched:  # the budget ran out: say where validation ended
        final_val = evaluate(model, splits[1], config.eval_batch_size, bf16=config.bf16)
    return model, result, {
        "target_accuracy": settings.target_accuracy,
        "reached_target": bool(matched),
        "matched_step": matched.get("step"),
        "matched_images": matched.get("images"),
        "matched_val_accuracy": matched.get("val_accuracy"),
        "final_val_accuracy": final_val,
        "val_evaluations": matcher.evaluations,
        "val_images": len(splits[1]),
        "check_every": settings.check_every,
    }


# --- affNIST at matched clean accuracy ------------------------------------------------------

@dataclass(frozen=True)
class RobustnessSet:
    split: Split
    name: str
    details: dict[str, Any]

    @property
    def identity(self) -> dict[str, Any]:
        """What must match for two trials to have been tested on the same set."""
        return {"robustness_set": self.name, **self.details}


_ROBUSTNESS_SETS: dict[tuple, RobustnessSet] = {}


def affnist_set(spec: StudySpec, profile: Profile, config: TrainConfig) -> RobustnessSet:
    """Official affNIST test files when present under the data root, else the generated set;
    loaded once per process and settings."""
    settings: AffnistSettings = profile.settings
    device = resolve_device(config.device)
    root = Path(config.data_root) if config.data_root else default_data_root()
    key = (str(root), settings.model_dump_json(), str(device))
    if key in _ROBUSTNESS_SETS:
        return _ROBUSTNESS_SETS[key]
    if affnist.find_affnist(root) is not None:
        images, labels = affnist.load_affnist(root, "test")
        name, details = "affNIST", {"source": "official affNIST test files"}
    else:
        ranges = affnist_style.AffineRanges(**settings.ranges.model_dump())
        generated = affnist_style.mnist_affnist_style(
            ranges, copies=settings.copies, seed=settings.generator_seed, device=device,
            root=config.data_root and Path(config.data_root),
        )
        images, labels = generated.images, generated.labels
        name, details = affnist_style.DESCRIPTION, {
            "ranges": ranges.as_dict(), "copies": generated.copies, "generator_seed": generated.seed,
        }
    if settings.affnist_size:
        images, labels = images[: settings.affnist_size], labels[: settings.affnist_size]
    details["images"] = int(labels.shape[0])
    details["fingerprint"] = affnist_style.source_fingerprint(images.cpu(), labels.cpu())
    chosen = RobustnessSet(Split(images.unsqueeze(1).to(device), labels.to(device)), name, details)
    _ROBUSTNESS_SETS[key] = chosen
    return chosen


@task("affnist")
def affnist_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: AffnistSettings = profile.settings
    splits = load_splits(config, resolve_device(config.device))
    robustness = affnist_set(spec, profile, config)
    model, result, matching = matched_training(settings, config, hooks, splits)
    accuracy = evaluate(model, robustness.split, config.eval_batch_size, bf16=config.bf16)
    metrics = train_metrics(result)
    metrics.update(
        matching,
        clean_accuracy=result.test_accuracy,
        # Only a model at the target is compared; one that never got there is measured too, but
        # reported apart.
        affnist_accuracy=accuracy if matching["reached_target"] else None,
        unmatched_affnist_accuracy=None if matching["reached_target"] else accuracy,
        robustness_set=robustness.name,
        robustness_details=robustness.details,
    )
    return TaskOutcome(metrics=metrics)


# --- rotation and translation sweeps ------------------------------------------------------

def _sweep(model, split: Split, config: TrainConfig, transform: str, amounts) -> list[dict[str, Any]]:
    rows = []
    for amount in amounts:
        if transform == "rotation":
            def edit(images, amount=amount):
                return augment.rotate(images, torch.full((images.shape[0],), float(amount), device=images.device))
        else:
            def edit(images, amount=amount):
                offsets = torch.full((images.shape[0],), int(amount), device=images.device)
                return augment.shift(images, torch.zeros_like(offsets), offsets, abs(int(amount)))
        accuracy = evaluate(model, split, config.eval_batch_size, edit, bf16=config.bf16)
        rows.append({"transform": transform, "amount": amount, "accuracy": accuracy})
    return rows


@task("rotation")
def rotation_task(spec: StudySpec, profile: Profile, config: TrainConfig, hooks: TrainHooks) -> TaskOutcome:
    settings: RotationSettings = profile.settings
    splits = load_splits(config, resolve_device(config.device))
    if settings.target_accuracy is not None:
        model, result, matching = matched_training(settings, config, hooks, splits)
    else:
        model = build_model(config)
        result, matching = train(config, None, model, hooks.checkpoint, splits), {}
    test = splits[2]
    rows = _sweep(model, test, config, "rotation", settings.angles)
    rows += _sweep(model, test, config, "translation", settings.shifts)
    metrics = train_metrics(result)
    metrics.update(matching, clean_accuracy=result.test_accuracy)
    return TaskOutcome(metrics=metrics, rows=rows)


# --- MultiMNIST: two overlapping digits ------------------------------------------------------

def multimnist_splits(settings: MultiMNISTSettings, config: TrainConfig,
                      device: torch.device) -> tuple[Split, Split, float]:
    """Train and test splits of generated MultiMNIST (train_size / test_size source digits of each
    MNIST split), and the test set's mean bounding-box overlap."""
    sets = []
    for split, pairs, seed_offset, limit in (("train", settings.train_pairs_per_digit, 0, config.train_size),
                                             ("test", settings.test_pairs_per_digit, 1, config.test_size)):
        # Another seed for the test set, so the two splits do not share a random stream.
        sets.append(multimnist.mnist_multimnist(split, pairs, settings.generator_seed + seed_offset, device,
                                                config.data_root, limit))
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
    result = train(config, None, model, hooks.checkpoint, (train_split, None, test_split))
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
    """The kind's settings, and for affNIST which robustness set (official or generated, with its
    fingerprint): changing any of them retrains instead of mixing old results in."""
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
