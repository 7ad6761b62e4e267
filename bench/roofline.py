"""The roofline of a benchmark row (Williams, Waterman & Patterson 2009, "Roofline: an insightful
visual performance model", CACM 52(4)): how fast the step could run on this device given the work
it does and the data it moves, and what fraction of that it reaches.

- The device's ceilings, measured here in the step's dtype: the arithmetic peak from a large matrix
  product (the fastest thing the device does), the memory bandwidth from a large copy (bytes read
  plus bytes written per second).
- The step's work: `flops_per_image` (matrix products and convolutions, counted as direct ones) and
  `bytes_per_image`, the bytes every operator of the step reads and writes, counted at the
  operator level on the plain path (views move nothing and are not counted): what the step would
  move if no operand stayed in cache from one operator to the next, so an upper estimate of its
  memory traffic.
- The bound: attainable = min(peak, intensity x bandwidth), intensity = FLOPs / byte; "compute" where
  the peak is the lower of the two, "memory" otherwise; `roofline_fraction` = achieved FLOP/s over
  the attainable. Both counts lean one way: the bytes are an upper estimate (operands that stay in
  cache are counted as moved), so the memory roof is a low one and a "memory" bound may be the
  count's; and CapsNet's DFT convolution does about a third of the nominal FLOPs. So a fraction can
  read high, even above 1: it says how far a step is from the roof, not how well it uses the chip.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from studies.training.devices import synchronize

# Big enough to leave the caches and fill the cores, small enough to measure in about a second.
MATMUL_SIDE = {"cpu": 2048, "cuda": 8192}
COPY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}
RUNS = 5


@dataclass(frozen=True)
class Peaks:
    gflop_per_s: float  # a MATMUL_SIDE^3 matrix product in the step's dtype
    gb_per_s: float  # a copy of COPY_BYTES: bytes read + written per second

    def columns(self) -> dict:
        return {"peak_gflop_per_s": self.gflop_per_s, "peak_copy_gb_per_s": self.gb_per_s}


def _median_seconds(fn, device: torch.device, runs: int) -> float:
    fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _matmul_seconds(side: int, dtype: torch.dtype, device: torch.device, runs: int) -> float:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device, dtype)
    b = torch.randn(side, side, generator=generator).to(device, dtype)
    product = torch.empty_like(a)
    return _median_seconds(lambda: torch.mm(a, b, out=product), device, runs)


def measure_peaks(device: torch.device, bf16: bool, runs: int = RUNS, side: int | None = None,
                  copy_mb: int | None = None) -> Peaks:
    """The device's arithmetic peak and copy bandwidth, medians of `runs` runs each (a smaller
    `side` and `copy_mb` than the defaults read low: for smoke runs only)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    side = side or MATMUL_SIDE.get(device.type, 2048)
    matmul_s = _matmul_seconds(side, dtype, device, runs)
    elements = (copy_mb << 20 if copy_mb else COPY_BYTES.get(device.type, 256 << 20)) // 4
    source = torch.ones(elements, device=device)
    target = torch.empty_like(source)
    copy_s = _median_seconds(lambda: target.copy_(source), device, runs)
    return Peaks(2 * side**3 / matmul_s / 1e9, 2 * source.numel() * source.element_size() / copy_s / 1e9)


def _bytes(values) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(values) if isinstance(t, torch.Tensor))


class BytesMoved(TorchDispatchMode):
    """Counts the bytes each operator reads (its tensor arguments) and writes (its tensor results),
    views aside."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not func.is_view:
            self.total += _bytes((args, kwargs)) + _bytes(result)
        return result


def columns(row: dict, peaks: Peaks) -> dict:
    """A row's roofline columns from its flops_per_image, bytes_per_image and images_per_s."""
    flops, moved = row.get("flops_per_image"), row.get("bytes_per_image")
    if not flops or not moved:
        return peaks.columns()
    intensity = flops / moved
    memory_roof = intensity * peaks.gb_per_s
    attainable = min(peaks.gflop_per_s, memory_roof)
    achieved = flops * row["images_per_s"] / 1e9
    return {
        **peaks.columns(),
        "flop_per_byte": intensity,
        "bound": "compute" if peaks.gflop_per_s <= memory_roof else "memory",
        "attainable_gflop_per_s": attainable,
        "roofline_fraction": achieved / attainable,
    }
