"""What a benchmark run measures: its options (`BenchOptions`, validated in one line each) and the
profiles that set batch sizes, repeats and the routing comparison's rounds."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge, Interval, MinLen

import models
from models.fields import ConfigError, check_fields
from studies.training.config import Device
from studies.training.devices import check_bf16, resolve_device


@dataclass(frozen=True)
class BenchProfile:
    batch_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    # Seconds of timed runs after which a row stops early (after at least 3 runs).
    row_budget_s: float | None
    compare_batch: int
    compare_rounds: int
    # Training rounds after those, without reference (a): for the ratio to the stem.
    stem_rounds: int
    # Warm-up of each compared model (bench/comparison.py): at least settle_min_s seconds and
    # until its memory has settled, at most settle_max_s seconds and settle_steps steps.
    settle_min_s: float
    settle_max_s: float
    settle_steps: int
    # Also time CapsNet and the stem with nn.Conv2d for PrimaryCaps (the routing's gain alone).
    conv2d_pair: bool
    data_repeats: int
    # The device's peaks (bench/roofline.py): timed runs, and the matrix side and copy size
    # (None: the device's defaults, which leave the caches and fill the cores).
    peak_runs: int = 5
    peak_matmul_side: int | None = None
    peak_copy_mb: int | None = None


# quick (batch 64 only, the studies' batch) is the one meant for a 2-core CPU, where the slowest
# rows (cnn_paper, reference (a); bench/README.md has their speeds) already take most of its time;
# hence no nn.Conv2d pair in it.
PROFILES = {
    "smoke": BenchProfile((2,), warmup=1, repeats=2, row_budget_s=None, compare_batch=2, compare_rounds=2, stem_rounds=1,
                          settle_min_s=0.0, settle_max_s=5.0, settle_steps=2, conv2d_pair=True, data_repeats=5,
                          peak_runs=1, peak_matmul_side=512, peak_copy_mb=64),
    "quick": BenchProfile((64,), warmup=1, repeats=5, row_budget_s=3.0, compare_batch=64, compare_rounds=5,
                          stem_rounds=12,
                          settle_min_s=8.0, settle_max_s=16.0, settle_steps=200, conv2d_pair=False,
                          data_repeats=50),
    "standard": BenchProfile((32, 64, 128, 256), warmup=2, repeats=10, row_budget_s=8.0, compare_batch=64,
                             compare_rounds=10, stem_rounds=20, settle_min_s=30.0, settle_max_s=60.0, settle_steps=400,
                             conv2d_pair=True, data_repeats=100),
    "paper": BenchProfile((16, 32, 64, 128, 256), warmup=3, repeats=20, row_budget_s=20.0, compare_batch=64,
                          compare_rounds=20, stem_rounds=30, settle_min_s=45.0, settle_max_s=120.0, settle_steps=400,
                          conv2d_pair=True, data_repeats=200),
}


Count = Annotated[int, Ge(1)]


@dataclass
class BenchOptions:
    """Each field's type and range is in its annotation, checked on construction (models/fields.py),
    so the command line and Python callers get the same one-line errors."""

    profile: Literal[tuple(PROFILES)] = "quick"
    models: Annotated[tuple[str, ...], MinLen(1)] | None = None  # default: every single-label model
    batch_sizes: Annotated[tuple[Count, ...], MinLen(1)] | None = None  # default: the profile's
    device: Device = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    routing_iters: Count | None = None  # CapsNet's; default the paper's 3
    # CapsNet's routing procedures to time besides the paper's (models/routing_procedures.py): a
    # row each, named capsnet/<procedure>; default every registered one, () none.
    routings: tuple[str, ...] | None = None
    threads: Annotated[int, Interval(ge=1, le=1024)] | None = None  # default: the usable cores
    image_size: Annotated[int, Interval(ge=8, le=1024)] = 28
    references: bool = True  # the routing comparison and the data-preparation row
    seed: Annotated[int, Ge(0)] = 0

    def __post_init__(self):
        check_fields(self)

    def validate(self) -> "BenchOptions":
        """Fill in the defaults; refuse (one line) a model name that is not registered, a model that
        cannot take the image size, or bf16 where the device has no bf16 matrix units."""
        # Default: every single-label model (the two-digit MultiMNIST models take other inputs).
        names = tuple(self.models) if self.models else tuple(
            name for name in models.names() if getattr(models.config_class(name), "labels_per_example", 1) == 1)
        for name in names:
            models.make_config(name, input_size=self.image_size)  # unknown names list the valid ones
        sizes = tuple(self.batch_sizes) if self.batch_sizes else PROFILES[self.profile].batch_sizes
        known = models.routing_names()
        routings = tuple(known if self.routings is None else self.routings)
        unknown = [name for name in routings if name not in known]
        if unknown:
            raise ConfigError(f"--routings: unknown routing procedure {unknown[0]!r}; valid: {', '.join(known)}")
        device = resolve_device(self.device)
        if self.bf16:
            check_bf16(device)
        return dataclasses.replace(self, models=names, batch_sizes=sizes,
                                   routings=tuple(name for name in routings if name != "dynamic"))
