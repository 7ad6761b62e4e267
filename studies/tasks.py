"""What a trial does after its configuration is known, per study kind.

`accuracy`: train, then test on the clean test set. Other kinds (robustness) register
their own task here; each returns the metrics to store on the trial and, optionally,
long-form rows (e.g. accuracy per rotation angle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from studies.config import TrainConfig
from studies.spec import StudySpec
from studies.train import EpochCallback, train


@dataclass
class TaskOutcome:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def objective(self) -> float:
        return float(self.metrics["test_error"])


Task = Callable[[StudySpec, TrainConfig, EpochCallback | None], TaskOutcome]
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
def accuracy_task(spec: StudySpec, config: TrainConfig, on_epoch: EpochCallback | None) -> TaskOutcome:
    return TaskOutcome(metrics=train_metrics(train(config, on_epoch=on_epoch)))
