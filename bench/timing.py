"""Timing, FLOP counting and peak-memory helpers shared by every benchmark row.

Timing follows torch.utils.benchmark's care with less machinery: the thread count is set
explicitly and recorded, warm-up runs are discarded, every timed run is bracketed by a device
synchronisation (a no-op on CPU, `torch.cuda.synchronize` on CUDA), and the median and
quartiles of the per-run times are reported rather than a mean.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from studies.training.devices import synchronize


def machine_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the whole host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads explicitly (default: the usable cores); return the count."""
    count = threads or machine_cores()
    torch.set_num_threads(count)
    return torch.get_num_threads()


@dataclass
class Timing:
    """Seconds per call over the timed runs."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.times)
        if len(ordered) == 1:
            return ordered[0]
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def iqr_pct(self) -> float:
        """Interquartile range of the run times as a percentage of the median."""
        return 100.0 * (self.quantile(0.75) - self.quantile(0.25)) / self.median


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator / denominator, for two Timings whose i-th runs were taken
    in the same round, seconds apart (`bench.comparison.Lockstep.time_rounds`): load on the
    machine that comes and goes divides out of each ratio (a ratio of medians can pair a quiet
    run with a loaded one)."""
    return statistics.median(a / b for a, b in zip(numerator.times, denominator.times, strict=True))


def time_runs(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Call `fn` `warmup` times untimed, then time up to `repeats` calls one by one.

    After `min_repeats` timed calls, stops early once `budget_s` seconds of timed calls have
    passed (slow rows get fewer repeats; every row still has at least `min_repeats`).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
        spent += times[-1]
        if budget_s is not None and len(times) >= min(min_repeats, repeats) and spent >= budget_s:
            break
    return Timing(times)


def count_flops(fn: Callable[[], object], *other_counters) -> int:
    """FLOPs (multiply and add counted separately, so 2 per MAC) of one call of `fn`, with any
    other counting modes active in the same call.

    torch.utils.flop_counter counts matrix products and convolutions, forward and backward;
    elementwise work (softmax, squash, optimiser) is not counted.
    """
    counter = FlopCounterMode(display=False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(counter)
        for other in other_counters:
            stack.enter_context(other)
        fn()
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory since the last reset and what it measures."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process_peak_rss"
    except OSError:
        pass
    import resource

    # ru_maxrss is in KiB on Linux; it cannot be reset, so it is the peak of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
