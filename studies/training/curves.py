"""Robustness as a curve along training, compared at equal clean accuracy.

Andreassen et al. 2021 ("The Evolution of Out-of-Distribution Robustness Throughout Fine-Tuning")
saw effective robustness appear during training and vanish at convergence, and a match at one
checkpoint measures where a model happened to stop: taking the first checkpoint whose noisy
validation reading reaches a target selects on that noise, by an amount that depends on how fast
the model learns. So every model trains the same budget, and at checkpoints along the way the
validation accuracy and, at the same weights, the robustness measures are recorded. The models are
compared at stated clean-accuracy levels (validation accuracies) by interpolating each seed's
curve between the two checkpoints that bracket the level: the "effective robustness" view of
Taori et al. 2020 and Miller et al. 2021, with the CNN's curve as the baseline.

Which checkpoints are taken, and which ones bracket a level, is decided from validation readings
alone (`Schedule`, `first_crossing`); the robustness measures and the test split never reach
those decisions. `CurveRecorder` records the curve during training, `train_curve` trains a model
the whole budget with one, and `interpolate` reads a curve at a level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models.fields import ConfigError
from models.speed_paths import SpeedPlan
from studies.training.config import TrainConfig
from studies.training.devices import resolve_device
from studies.training.loop import Progress, SpeedSource, Split, TrainResult, build_model, evaluate, train


@dataclass(frozen=True)
class Schedule:
    """Checkpoints every `check_every` steps, every `dense_every` while the last validation
    reading is within `dense_margin` of a level."""

    levels: tuple[float, ...]
    check_every: int
    dense_every: int
    dense_margin: float

    def next_interval(self, val_accuracy: float) -> int:
        near = any(abs(val_accuracy - level) <= self.dense_margin for level in self.levels)
        return self.dense_every if near else self.check_every


def first_crossing(readings: Sequence[float], level: float) -> int | None:
    """The index i of the first checkpoint whose validation reading reaches `level` right after
    one below it (readings[i - 1] < level <= readings[i]): the pair (i - 1, i) brackets the level.
    None when no such pair exists: never reached, or at or above it from the first reading (the
    untrained model's, so a level at or below chance)."""
    if not readings or readings[0] >= level:
        return None
    for i in range(1, len(readings)):
        if readings[i - 1] < level <= readings[i]:
            return i
    return None


def interpolate(readings: Sequence[float], values: Sequence[float], level: float) -> float:
    """`values` at validation accuracy `level`, linear between the bracketing checkpoints (NaN
    when the level is not bracketed, or a value at either end is missing)."""
    i = first_crossing(readings, level)
    if i is None:
        return math.nan
    low, high = readings[i - 1], readings[i]
    a, b = values[i - 1], values[i]
    if a is None or b is None:
        return math.nan
    return float(a + (level - low) / (high - low) * (b - a))


Measure = Callable[[torch.nn.Module], dict[str, Any]]


class CurveRecorder:
    """A StepCheck that records one row per checkpoint: step, images seen, the validation accuracy,
    whatever `measure` returns at the same weights, and the clean test accuracy where a level was
    first crossed (at both bracketing checkpoints; the previous checkpoint's weights are kept for
    that) unless `measure` gives it everywhere. The untrained model is the first checkpoint
    (`start`), read on validation only and measured only if a level is crossed right after it, so
    every level the curve reaches is bracketed. It never stops training: every arm trains the
    whole budget."""

    def __init__(self, schedule: Schedule, val: Split, measure: Measure, test: Split, eval_batch_size: int,
                 bf16: bool):
        self.schedule, self.val, self.measure, self.test = schedule, val, measure, test
        self.eval_batch_size, self.bf16 = eval_batch_size, bf16
        self.rows: list[dict[str, Any]] = []
        self.next_step = schedule.check_every
        self.previous_weights: dict[str, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def _evaluate(self, model: torch.nn.Module, split: Split) -> float:
        return evaluate(model, split, self.eval_batch_size, bf16=self.bf16)

    def start(self, model: torch.nn.Module) -> None:
        """Step 0: the untrained model's validation reading (its measures wait for a crossing)."""
        self.rows = [{"step": 0, "images": 0, "epoch": 0, "val_accuracy": self._evaluate(model, self.val),
                      "test_accuracy": None, "measured": False}]
        self._keep(model)

    def __call__(self, progress: Progress) -> None:
        model = progress.model
        readings = [row["val_accuracy"] for row in self.rows]
        val_accuracy = self._evaluate(model, self.val)
        row = {"step": progress.step, "images": progress.images, "epoch": progress.epoch,
               "val_accuracy": val_accuracy, "test_accuracy": None, "measured": True, **self.measure(model)}
        crossed = [level for level in self.schedule.levels
                   if first_crossing(readings + [val_accuracy], level) == len(readings)]
        if crossed:
            if row["test_accuracy"] is None:
                row["test_accuracy"] = self._evaluate(model, self.test)
            previous = self.rows[-1]
            if previous["test_accuracy"] is None or not previous["measured"]:
                current = {name: value.clone() for name, value in model.state_dict().items()}
                model.load_state_dict(self.previous_weights)
                if not previous["measured"]:
                    previous.update(self.measure(model), measured=True)
                if previous["test_accuracy"] is None:
                    previous["test_accuracy"] = self._evaluate(model, self.test)
                model.load_state_dict(current)
        self.rows.append(row)
        self._keep(model)
        self.next_step = progress.step + self.schedule.next_interval(val_accuracy)

    def _keep(self, model: torch.nn.Module) -> None:
        """A copy of this checkpoint's weights, in buffers reused from one checkpoint to the next."""
        state = model.state_dict()
        if not self.previous_weights:
            self.previous_weights = {name: torch.empty_like(value) for name, value in state.items()}
        for name, value in state.items():
            self.previous_weights[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "next_step": self.next_step, "previous_weights": self.previous_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.next_step = state["rows"], state["next_step"]
        self.previous_weights = state["previous_weights"]


def train_curve(config: TrainConfig, schedule: Schedule, splits: tuple[Split, Split | None, Split], measure: Measure,
                checkpoint: Path | None = None, speed_plan: SpeedPlan | SpeedSource | None = None,
                ) -> tuple[torch.nn.Module, TrainResult, list[dict[str, Any]]]:
    """Train the whole budget, recording the validation accuracy and `measure` at the checkpoints
    `schedule` takes (`CurveRecorder`); returns the final model, the result and the curve's rows,
    the last of which is the final model with its clean test accuracy. `checkpoint` and
    `speed_plan` are `train`'s."""
    if splits[1] is None:
        raise ConfigError("a robustness curve needs a validation split (val_size > 0)")
    recorder = CurveRecorder(schedule, splits[1], measure, splits[2], config.eval_batch_size, config.bf16)
    model = build_model(config).to(resolve_device(config.device))
    # The untrained model, read on validation (no randomness); a resumed run's state replaces it.
    recorder.start(model)
    result = train(config, None, model, checkpoint, splits, check=recorder, speed_plan=speed_plan)
    rows = recorder.rows
    if rows[-1]["test_accuracy"] is None:
        rows[-1]["test_accuracy"] = result.test_accuracy
    return model, result, rows


__all__ = ["CurveRecorder", "Measure", "Schedule", "first_crossing", "interpolate", "train_curve"]
