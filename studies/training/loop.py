"""Train one configuration and return its metrics (the nanoGPT-style training file)."""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

import models
from models import speed_paths
from models.fields import ConfigError
from models.speed_paths import SpeedPlan
from studies.data import datasets
from studies.data.atomic_save import save_atomically
from studies.data.augment import parse_augmentation
from studies.data.expanded import expanded_test_set, place_on_canvas
from studies.data.splits import CorrectRule, Split
from studies.data.subsets import train_val_test_indices
from studies.training import stop
from studies.training.config import TrainConfig
from studies.training.devices import (
    algorithm_settings,
    autocast,
    check_bf16,
    compiles,
    device_name,
    resolve_device,
    synchronize,
)
from studies.training.optimizer import adam

# The expanded validation/test sets are the same for every trial, whatever its seed.
EXPANDED_EVAL_SEED = 1234


class StopTraining(Exception):
    """Raised by an epoch callback or a StepCheck to end training early (early stopping)."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class TrainResult:
    config: dict[str, Any]
    test_accuracy: float
    test_error: float
    history: list[dict[str, float]]
    # Seconds of training steps (the epochs, less the time a StepCheck spent evaluating).
    train_seconds: float
    train_images_per_s: float
    params: int
    train_images: int
    test_images: int
    # Images the model trained on (epochs x train_images, less where training stopped early).
    images_seen: int
    device: str
    val_images: int = 0
    # At the end of the last epoch (None without a validation split, or where a StepCheck read it).
    val_accuracy: float | None = None
    # The CPU speed paths the run used (models/speed_paths.py), or "each path's own rule".
    speed_plan: str = "each path's own rule"
    torch_version: str = field(default_factory=lambda: torch.__version__)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def load_splits(config: TrainConfig, device: torch.device) -> tuple[Split, Split | None, Split]:
    """Train, validation (or None) and test splits, moved to the device once: seeded class-stratified
    random subsets (studies/data/subsets.py), training and validation disjoint, never a fixed block."""
    train_images, train_labels = datasets.load(config.dataset, "train", config.data_root)
    test_images, test_labels = datasets.load(config.dataset, "test", config.data_root)
    total = train_labels.shape[0]
    available = total - config.val_size
    if (config.train_size or 0) > available or available < 1:
        asked = (f"train_size {config.train_size} + val_size {config.val_size} exceed" if config.train_size
                 else f"val_size {config.val_size} leaves no training image of")
        raise ConfigError(f"{asked} the {total} training images")
    if config.test_size and config.test_size > test_labels.shape[0]:
        raise ConfigError(f"test_size {config.test_size} exceeds the {test_labels.shape[0]} test images")
    train_index, val_index, test_index = train_val_test_indices(
        train_labels, test_labels, config.train_size, config.val_size, config.test_size, config.split_seed)

    def split(images, labels, index: torch.Tensor, expand: bool = False) -> Split:
        images = images[index]
        if expand and config.canvas:
            images = expanded_test_set(images, EXPANDED_EVAL_SEED, config.canvas)
        return Split(images.unsqueeze(1).to(device), labels[index].to(device))

    train = split(train_images, train_labels, train_index)
    val = split(train_images, train_labels, val_index, True) if config.val_size else None
    test = split(test_images, test_labels, test_index, True)
    return train, val, test


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The configuration's model, sized for its dataset (or canvas) and initialised from its seed."""
    info = datasets.get_info(config.dataset)
    options = {"in_channels": 1, "input_size": config.canvas or info.image_size, "num_classes": info.num_classes}
    options.update(config.model_options)
    torch.manual_seed(config.seed)
    return models.create(config.model, **options)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    split: Split,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bf16: bool = False,
) -> float:
    """Accuracy of the model's class scores by the split's rule (`Split.correct`): the fraction
    of what the rule judges (examples, or labels where it judges each) that it finds right;
    `transform` edits float batches."""
    was_training = model.training
    model.eval()
    device = split.images.device
    correct = torch.zeros((), dtype=torch.long, device=device)
    judged = 0
    for start in range(0, len(split), batch_size):
        stop.check()
        images = to_float(split.images[start : start + batch_size])
        if transform is not None:
            images = transform(images)
        with autocast(device, bf16):
            scores = model(images).scores
        right = split.correct(scores, split.labels[start : start + batch_size])
        correct += right.sum()
        judged += right.numel()  # a shape: no wait for the device
    model.train(was_training)
    return correct.item() / judged


EpochCallback = Callable[[dict[str, float], torch.nn.Module], None]
# What must match for a checkpoint to be resumed (not where, how fast or how verbosely it runs).
RUN_INDEPENDENT = ("device", "data_root", "progress", "compile", "deterministic", "checkpoint_every")


def _run_identity(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in RUN_INDEPENDENT}


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic write, so a crash mid-save leaves the previous checkpoint intact; a full or read-only
    disk raises WriteFailed naming the checkpoint and leaves no partial file."""
    # A save killed part-way (SIGKILL, power loss) leaves its temporary file; a trial has one writer.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    save_atomically(state, path)


def load_checkpoint(path: Path | None, config: TrainConfig, device: torch.device) -> dict | None:
    """The checkpoint of this exact configuration, or None (absent, unreadable or another run's)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a torn or foreign file is not trusted; training starts over
        return None
    return state if state.get("identity") == _run_identity(config) and "rng" in state else None


@dataclass
class Progress:
    """What a StepCheck sees after a step it said was due."""

    epoch: int
    step: int  # optimiser steps so far, over all epochs
    images: int  # training images seen so far
    model: torch.nn.Module


class StepCheck(Protocol):
    """Called after an optimiser step for which `due(step)` is true, and at the end of every
    epoch; may raise StopTraining. `due` runs after every step and must not wait for the device (no
    `.item()`). `state_dict` is saved with every epoch's checkpoint and handed back to
    `load_state_dict` on a resume, so a resumed run checks as the uninterrupted one would have."""

    def due(self, step: int) -> bool: ...

    def __call__(self, progress: Progress) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# How often the loss's finiteness is looked at on the host: reading it every step would wait for
# the device every step.
FINITE_CHECK_EVERY = 50


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global random states a training step draws from: the CPU's, and the device's (dropout
    on CUDA draws from the CUDA generator)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu())


# Asked once per run, before its first step: (model, training batch shape, bf16) -> the plan.
SpeedSource = Callable[[torch.nn.Module, tuple[int, int, int, int], bool], "SpeedPlan | None"]

StepForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _scores_and_loss(model: torch.nn.Module) -> StepForward:
    """The training step's forward: class scores and the loss to minimise. `targets` is what the
    model reconstructs: its input, or each digit alone on MultiMNIST."""

    def scores_and_loss(images: torch.Tensor, labels: torch.Tensor,
                        targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model(images, labels)
        return output.scores, model.loss(output, targets, labels).total

    return scores_and_loss


class CompiledOrEager:
    """The compiled training step, or the eager one if compiling fails (inductor or Triton missing
    or broken on the machine): one warning, and the run goes on eagerly. Inductor compiles the
    forward at the first call and the backward at the first `backward()`; a failure in either
    before the first compiled step has gone through (`confirm`) falls back, and that batch is run
    again eagerly (its dropout draws are then taken twice). A later error is the run's own."""

    def __init__(self, compiled: StepForward | None, eager: StepForward):
        self.compiled, self.eager = compiled, eager
        self.confirmed = False

    @classmethod
    def of(cls, eager: StepForward) -> "CompiledOrEager":
        """`eager` compiled (static shapes), or eager with the one warning where even setting up the
        compilation fails (a Python or platform torch.compile does not support)."""
        compiled = cls(None, eager)
        try:
            compiled.compiled = torch.compile(eager, dynamic=False)
        except Exception as error:
            compiled.fall_back(error)
        return compiled

    def __call__(self, *args):
        if self.compiled is None:
            return self.eager(*args)
        if self.confirmed:
            return self.compiled(*args)
        try:
            return self.compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # whatever the compiler stack raises; the eager step is the same function
            self.fall_back(error)
            return self.eager(*args)

    def may_fall_back(self) -> bool:
        return self.compiled is not None and not self.confirmed

    def fall_back(self, error: Exception) -> None:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {first}); training runs eagerly",
                      RuntimeWarning, stacklevel=3)
        self.compiled = None

    def confirm(self) -> None:
        """The compiled forward and backward have both run once."""
        self.confirmed = self.compiled is not None


def _forward_backward(forward: StepForward, eager: StepForward, optimizer, device: torch.device, bf16: bool,
                      *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and loss of a batch, its gradients in the parameters. A compiled step whose backward
    fails to compile before the step was ever confirmed falls back, and the batch runs eagerly."""
    with autocast(device, bf16):
        scores, loss = forward(*batch)
    optimizer.zero_grad(set_to_none=True)
    try:
        loss.backward()
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        if not (isinstance(forward, CompiledOrEager) and forward.may_fall_back()):
            raise
        forward.fall_back(error)
        with autocast(device, bf16):
            scores, loss = eager(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if isinstance(forward, CompiledOrEager):
        forward.confirm()
    return scores, loss


class EpochCounters:
    """An epoch's bookkeeping on the device (the loss sum, the training images right by the
    training split's rule, the first step whose loss was not finite, the step count), read on the
    host every few steps only. One function updates all of them: where the training step compiles,
    it compiles too, and inductor fuses its dozen tiny operations into a kernel or two."""

    def __init__(self, device: torch.device, step: StepForward, correct: CorrectRule):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        # Compiled where the step is, and eager again once the step fell back (one warning a run).
        self.training_step = step if isinstance(step, CompiledOrEager) else None
        compiling = self.training_step is not None and self.training_step.compiled is not None
        self.count_step = _counting(correct)
        self.compiled = CompiledOrEager.of(self.count_step) if compiling else None

    def reset(self) -> None:
        """At an epoch's start (in place: a compiled count keeps its inputs)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.first_bad_step.fill_(-1)
        self.step.zero_()

    def count(self, loss: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, full_batch: bool) -> None:
        # An epoch's last, smaller batch is counted eagerly, as it is trained (no graph for its shape).
        compiled = self.compiled is not None and self.training_step.compiled is not None
        count = self.compiled if compiled and full_batch else self.count_step
        count(self.loss_sum, self.correct, self.first_bad_step, self.step, loss.detach(), scores.detach(), labels)
        if count is self.compiled:
            self.compiled.confirm()

    def raise_if_diverged(self, epoch: int) -> None:
        step = int(self.first_bad_step.item())
        if step >= 0:
            raise Diverged(epoch, step, float(self.loss_sum.item()))


def _counting(rule: CorrectRule) -> Callable[..., None]:
    """The counting step for a split whose examples are right by `rule`."""

    def count_step(loss_sum, correct, first_bad_step, step, loss, scores, labels) -> None:
        bad = ~torch.isfinite(loss) & (first_bad_step < 0)
        first_bad_step.copy_(torch.where(bad, step, first_bad_step))
        loss_sum.add_(loss * labels.shape[0])
        correct.add_(rule(scores, labels).sum())
        step.add_(1)

    return count_step


def train(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    model: torch.nn.Module | None = None,
    checkpoint: Path | None = None,
    splits: tuple[Split, Split | None, Split] | None = None,
    check: StepCheck | None = None,
    speed_plan: SpeedPlan | SpeedSource | None = None,
) -> TrainResult:
    """Train `config` and test it. `on_epoch(record, model)` runs after every epoch; it may
    raise StopTraining to end early, or anything else to abort (e.g. to prune). `check` runs after
    the steps it says are due and may raise StopTraining too. Here the test split is evaluated once,
    after training has stopped (a check may read it, never to choose anything). `model` replaces the freshly built one and is trained in place (callers
    keep a handle on it). With `checkpoint`, the full training state is saved every
    `config.checkpoint_every` epochs,
    and a run of the same configuration resumes from it: the same result as an uninterrupted run.
    `splits`, as `load_splits` returns them, spares a caller that needs them too a second load.
    `speed_plan` chooses the CPU speed paths (models/speed_paths.py): a plan, a `SpeedSource` asked
    once with the model and the shape of a training batch (the engine's, which measures or reuses
    the study's choice: studies/training/speed_choice.py), or None (each path's own rule); a resumed
    run keeps the plan its checkpoint was started with."""
    device = resolve_device(config.device)
    if config.bf16:
        check_bf16(device)
    with algorithm_settings(device, config.deterministic, tf32=config.bf16), contextlib.ExitStack() as scope:
        return _train(config, device, on_epoch, model, checkpoint, splits, check, speed_plan, scope)


def _speed_plan(speed_plan: SpeedPlan | SpeedSource | None, resumed: dict | None, model: torch.nn.Module,
                images: tuple[int, int, int, int], bf16: bool, device: torch.device) -> SpeedPlan | None:
    """The plan a resumed run started with; else the one given, or the source's for this model;
    none off the CPU, where no hand-written CPU path runs."""
    if device.type != "cpu":
        return None
    if resumed is not None and "speed_plan" in resumed:
        return SpeedPlan.from_dict(resumed["speed_plan"]) if resumed["speed_plan"] else None
    if callable(speed_plan):
        return speed_plan(model, images, bf16)
    return speed_plan


def _train(config: TrainConfig, device: torch.device, on_epoch: EpochCallback | None, model: torch.nn.Module | None,
           checkpoint: Path | None, splits: tuple[Split, Split | None, Split] | None, check: StepCheck | None,
           speed_plan: SpeedPlan | SpeedSource | None, scope: contextlib.ExitStack) -> TrainResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    train_split, val_split, test_split = splits or load_splits(config, device)
    if model is None:
        model = build_model(config)
    model.to(device).train()
    step_loss = _scores_and_loss(model)
    # Compiled as a function that calls the module, so the module itself (its state dict, what
    # callbacks and evaluation see) stays as it is. Static shapes: one graph for the batch size.
    compiled_step_loss = CompiledOrEager.of(step_loss) if compiles(device, config.compile) else step_loss
    augment = parse_augmentation(config.augmentation)
    optimizer = adam(model.parameters(), config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: config.lr_decay ** (step / config.lr_decay_steps)
    )

    history: list[dict[str, float]] = []
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    train_seconds = 0.0
    first_epoch = 1
    resumed = load_checkpoint(checkpoint, config, device)
    side = config.canvas or train_split.images.shape[-1]
    images_shape = (min(config.batch_size, len(train_split)), train_split.images.shape[1], side, side)
    speed_plan = _speed_plan(speed_plan, resumed, model, images_shape, config.bf16, device)
    scope.enter_context(speed_paths.using(speed_plan))
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        generator.set_state(resumed["generator"].cpu())
        set_rng_states(resumed["rng"])
        history, train_seconds = resumed["history"], resumed["train_seconds"]
        first_epoch = resumed["epoch"] + 1
        if check is not None and resumed.get("check") is not None:
            check.load_state_dict(resumed["check"])
    stopped = False
    images_seen = (first_epoch - 1) * len(train_split)
    counters = EpochCounters(device, compiled_step_loss, train_split.correct)
    for epoch in range(first_epoch, config.epochs + 1):
        synchronize(device)
        started = time.perf_counter()
        checking = 0.0  # seconds in the checks' evaluations: not training time
        order = torch.randperm(len(train_split), generator=generator, device=device)
        counters.reset()
        epoch_seen = 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{config.model} epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            unit="step",
        )
        for step in bar:
            stop.check()
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            images, labels = to_float(train_split.images[index]), train_split.labels[index]
            if config.canvas:
                images = place_on_canvas(images, generator, config.canvas)
            if augment is not None:
                images = augment(images, generator)
            # An epoch's last, smaller batch runs eagerly: a graph for its shape would cost a second
            # compilation for one step per epoch.
            forward = compiled_step_loss if labels.shape[0] == config.batch_size else step_loss
            targets = images if train_split.targets is None else to_float(train_split.targets[index])
            scores, loss = _forward_backward(forward, step_loss, optimizer, device, config.bf16, images, labels,
                                             targets)
            optimizer.step()
            schedule.step()
            counters.count(loss, scores, labels, full_batch=labels.shape[0] == config.batch_size)
            epoch_seen += labels.shape[0]
            images_seen += labels.shape[0]
            last = step == steps_per_epoch - 1
            if (step + 1) % FINITE_CHECK_EVERY == 0 or last:
                counters.raise_if_diverged(epoch)
            global_step = (epoch - 1) * steps_per_epoch + step + 1
            if check is not None and (check.due(global_step) or last):
                counters.raise_if_diverged(epoch)
                progress = Progress(epoch, global_step, images_seen, model)
                check_started = time.perf_counter()
                try:
                    check(progress)
                except StopTraining:
                    stopped = True
                    break
                finally:
                    checking += time.perf_counter() - check_started
        bar.close()
        synchronize(device)
        train_seconds += time.perf_counter() - started - checking
        record = {
            "epoch": epoch,
            "train_loss": counters.loss_sum.item() / epoch_seen,
            "train_accuracy": counters.correct.item() / epoch_seen,
            "lr": schedule.get_last_lr()[0],
            "seconds": train_seconds,
            "images": images_seen,
        }
        if stopped:
            history.append(record)
            break
        if val_split is not None and check is None:  # a StepCheck reads validation itself, when it chooses
            record["val_accuracy"] = evaluate(model, val_split, config.eval_batch_size, bf16=config.bf16)
        history.append(record)
        if on_epoch is not None:
            try:
                on_epoch(record, model)
            except StopTraining:
                break
        if checkpoint is not None and epoch % config.checkpoint_every == 0:
            save_checkpoint(checkpoint, {
                "identity": _run_identity(config), "epoch": epoch, "history": history,
                "train_seconds": train_seconds, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state(), "rng": rng_states(device),
                "check": check.state_dict() if check is not None else None,
                "speed_plan": speed_plan.to_dict() if speed_plan is not None else None,
            })

    test_accuracy = evaluate(model, test_split, config.eval_batch_size, bf16=config.bf16)
    return TrainResult(
        config=config.to_dict(),
        test_accuracy=test_accuracy,
        test_error=1.0 - test_accuracy,
        history=history,
        train_seconds=train_seconds,
        train_images_per_s=images_seen / train_seconds,
        params=sum(p.numel() for p in model.parameters()),
        train_images=len(train_split),
        images_seen=images_seen,
        test_images=len(test_split),
        device=device_name(device),
        val_images=len(val_split) if val_split is not None else 0,
        val_accuracy=history[-1].get("val_accuracy") if history else None,
        speed_plan=speed_paths.describe(speed_plan),
    )
