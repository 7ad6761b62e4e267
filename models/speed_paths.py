"""Which hand-written CPU speed path a step runs: the plan in force in this process.

A speed path computes the same function as its plain PyTorch twin, float rounding aside, faster
on some CPUs and not on others; which one pays is measured where it runs
(`studies.training.speed_choice`), and the answer is handed in here as a `SpeedPlan`:
- routing: "kernels" (the hand-scheduled routing of models/routing.py with the C++ sweeps of
  models/cpu), "sweeps" (the same routing in PyTorch ops, `models.routing_sweeps`) or
  "autograd" (Procedure 1 in plain tensor ops differentiated by autograd,
  `models.routing.route_with_autograd`: the plain twin);
- primary_conv: "dft" (models/cpu/dft_conv.py, in training only: a forward alone gains nothing)
  or "direct" (nn.Conv2d: the plain twin). It applies to PrimaryCaps layers left at
  `primary_conv="auto"`.
Without a plan (`current()` is None, as in a bare `train()` call or on CUDA) each path's own rule
applies: the kernels from batch 16 where they are built, the DFT from batch 48.
"""
from __future__ import annotations

import contextlib
import typing
from dataclasses import asdict, dataclass
from typing import Literal

# A hand-written path must make its step at least this much faster than its plain twin to run.
MIN_FACTOR = 1.3

Routing = Literal["kernels", "sweeps", "autograd"]
PrimaryConv = Literal["dft", "direct"]
PLAIN = {"routing": "autograd", "primary_conv": "direct"}


@dataclass(frozen=True)
class SpeedPlan:
    """The path of each site a model has; None where it has no such site (a CNN has neither, a
    CapsNet with another routing procedure no routing path), and there the path's own rule applies."""

    routing: Routing | None = None
    primary_conv: PrimaryConv | None = None

    def __post_init__(self):
        for name, kind in (("routing", Routing), ("primary_conv", PrimaryConv)):
            valid = typing.get_args(kind)
            if getattr(self, name) not in (*valid, None):
                raise ValueError(f"speed plan {name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SpeedPlan":
        return cls(**{name: values[name] for name in ("routing", "primary_conv") if name in values})

    def describe(self) -> str:
        parts = [f"routing {self.routing}" if self.routing else "", f"PrimaryCaps {self.primary_conv}"
                 if self.primary_conv else ""]
        return ", ".join(part for part in parts if part) or "no hand-written path"


def describe(plan: SpeedPlan | None) -> str:
    """What a run's records say about the paths it ran."""
    return plan.describe() if plan is not None else "each path's own rule"


_current: SpeedPlan | None = None


def current() -> SpeedPlan | None:
    return _current


@contextlib.contextmanager
def using(plan: SpeedPlan | None):
    """Inside, steps follow `plan` (None: each path's own rule)."""
    global _current
    previous, _current = _current, plan
    try:
        yield
    finally:
        _current = previous
