"""The routing comparison's models, each in a process of its own, stepped in turn.

Sharing one process lets the models disturb each other's timings through the allocator: models
of different sizes interleaved in one glibc heap fragment it, and CapsNet's step then pays page
faults for memory the heap keeps growing into, so the ratios wander from run to run (bench/README.md
has the numbers). A training run trains one model per process, so each compared model gets one here:
- every worker builds the same weights from the seed (references (a) and (c) copy our CapsNet's);
- `settle` steps a model for a minimum time and until its resident memory has stopped growing
  for a few steps (the heap has reached the size it keeps), within a time cap, and says how
  many steps that took;
- `time_rounds` steps the models one after the other, two steps each per round of which the
  second is timed, so load on the machine that comes and goes hits them all and divides out of
  per-round ratios. Only one worker computes at a time; the others wait on their pipe.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
import traceback
from typing import TYPE_CHECKING

import torch

from bench.references import BroadcastCapsNet, ConvStem, PlainCapsNet
from bench.model_steps import ModelSteps, bench_model
from bench.timing import Timing, set_threads
from models import speed_paths
from models.capsnet import CapsNet
from models.cpu import kernels as cpu_kernels
from models.speed_paths import SpeedPlan
from studies.training.devices import resolve_device, set_algorithms, synchronize

if TYPE_CHECKING:
    from bench.options import BenchOptions

COMPARE_MODEL = "capsnet"
REFERENCE_A = "reference_a_broadcast"
REFERENCE_B = "reference_b_stem"
REFERENCE_C = "reference_c_plain"
COMPARE_CONV2D = "capsnet_conv2d"
REFERENCE_B_CONV2D = "reference_b_stem_conv2d"
# In the order they are timed in a round: each model next to the stem it is compared with.
COMPARED = (COMPARE_MODEL, REFERENCE_B, REFERENCE_C, REFERENCE_A, COMPARE_CONV2D, REFERENCE_B_CONV2D)

# Resident-memory growth below this per step counts as settled (Python's own small objects).
_SETTLED_GROWTH_BYTES = 256 << 10
# How long a worker may take to start (import torch, build its model) or answer one command.
_REPLY_TIMEOUT_S = 900.0


def build_compared(name: str, options: "BenchOptions") -> torch.nn.Module:
    """One of COMPARED, with weights drawn from the options' seed (the same in every process)."""
    torch.manual_seed(options.seed)
    ours = bench_model(COMPARE_MODEL, options)
    # The same two with nn.Conv2d for PrimaryCaps separate the routing's gain from the DFT's.
    conv2d_config = dataclasses.replace(ours.config, primary_conv="direct")
    if name == COMPARE_MODEL:
        return ours
    if name == REFERENCE_A:
        return BroadcastCapsNet(ours.config).copy_from(ours)
    if name == REFERENCE_B:
        return ConvStem(ours.config)
    if name == REFERENCE_C:
        return PlainCapsNet(ours.config).copy_from(ours)
    if name == COMPARE_CONV2D:
        ours_conv2d = CapsNet(conv2d_config)
        ours_conv2d.load_state_dict(ours.state_dict())
        return ours_conv2d
    if name == REFERENCE_B_CONV2D:
        return ConvStem(conv2d_config)
    raise ValueError(f"unknown compared model {name!r}; valid: {', '.join(COMPARED)}")


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not Linux
        return None


def settle(step, device: torch.device, min_seconds: float, max_seconds: float, max_steps: int,
           quiet_steps: int = 5) -> tuple[int, bool]:
    """Run `step` for at least `min_seconds` and until the process's resident memory has not grown
    for `quiet_steps` steps in a row, but stop after `max_steps` steps or `max_seconds`; return the
    number of steps and whether memory had settled. The minimum time matters: a CapsNet heap
    grows in bursts, with lulls of a few steps between them, in its first ~75 training steps.
    Where resident memory cannot be read, only the time and step limits apply."""
    started = time.perf_counter()
    peak = _resident_bytes()
    steps = quiet = 0
    while steps < max_steps:
        step()
        synchronize(device)
        steps += 1
        now = _resident_bytes()
        if peak is not None and now is not None and now > peak + _SETTLED_GROWTH_BYTES:
            peak, quiet = now, 0
        else:
            quiet += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and quiet >= quiet_steps:
            return steps, True
        if elapsed >= max_seconds:
            break
    return steps, False


def _serve(connection, name: str, options: "BenchOptions", batch: int, flop_counts: dict,
           plan: dict | None) -> None:
    """A worker: builds its model, then answers commands until "stop" (or its parent is gone), with
    the CPU speed plan chosen for our CapsNet in force (the stems compute PrimaryCaps as it does)."""
    # Ctrl-C reaches every process of the terminal; the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with speed_paths.using(SpeedPlan.from_dict(plan) if plan else None):
        _answer(connection, name, options, batch, flop_counts)


def _answer(connection, name: str, options: "BenchOptions", batch: int, flop_counts: dict) -> None:
    try:
        set_threads(options.threads)
        device = resolve_device(options.device)
        set_algorithms(device, deterministic=False, tf32=options.bf16)  # as training runs; this process ends here
        runner = ModelSteps(build_compared(name, options), batch, options, device, flop_counts)
        connection.send(("ok", None))
    except Exception:
        connection.send(("error", traceback.format_exc(limit=-3)))
        return
    while True:
        try:
            command, *args = connection.recv()
        except EOFError:
            return
        if command == "stop":
            return
        try:
            if command == "settle":
                mode, min_seconds, max_seconds, max_steps = args
                reply = settle(runner.step(mode), device, min_seconds, max_seconds, max_steps)
            elif command == "time":
                (mode,) = args
                step = runner.step(mode)
                # The step after a pause runs on cold caches and idle cores, slower than in training,
                # where steps follow each other: so the timed step follows an untimed one.
                step()
                synchronize(device)
                started = time.perf_counter()
                step()
                synchronize(device)
                reply = time.perf_counter() - started
            elif command == "describe":
                (mode,) = args
                reply = runner.describe(mode)
            else:
                raise ValueError(f"unknown command {command!r}")
            connection.send(("ok", reply))
        except Exception:
            connection.send(("error", traceback.format_exc(limit=-3)))


class Lockstep:
    """Worker processes, one per compared model; use as a context manager (it stops them).
    `flop_counts` (`ModelSteps`'s cache, e.g. from the models section) spares the workers counting
    again what the caller has counted; `plan`, the CPU speed plan every worker runs under."""

    def __init__(self, names: tuple[str, ...], options: "BenchOptions", batch: int, flop_counts: dict | None = None,
                 plan: SpeedPlan | None = None):
        if resolve_device(options.device).type == "cpu":
            cpu_kernels.module()  # a build (or its warning) here once, not in every worker
        context = multiprocessing.get_context("spawn")  # fork would copy this process's heap and threads
        self.workers = {}
        try:
            for name in names:
                ours, theirs = context.Pipe()
                process = context.Process(target=_serve, args=(theirs, name, options, batch, dict(flop_counts or {}),
                                                 plan.to_dict() if plan else None),
                                          daemon=True)
                process.start()
                theirs.close()
                self.workers[name] = (process, ours)
            for name in names:
                self._reply(name)
        except BaseException:
            self.close()
            raise

    def _reply(self, name: str):
        process, connection = self.workers[name]
        try:
            if not connection.poll(_REPLY_TIMEOUT_S):
                raise RuntimeError(f"the benchmark worker for {name} did not answer in {_REPLY_TIMEOUT_S:.0f} s")
            status, value = connection.recv()
        except (EOFError, ConnectionError):
            process.join(timeout=5)
            raise RuntimeError(f"the benchmark worker for {name} exited (code {process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the benchmark worker for {name} failed:\n{value}")
        return value

    def ask(self, name: str, *command):
        self.workers[name][1].send(command)
        return self._reply(name)

    def settle(self, names, mode: str, min_seconds: float, max_seconds: float, max_steps: int) -> dict[str, tuple]:
        """Settle each model in turn (one at a time, so none is slowed by another): (steps, settled)."""
        return {name: self.ask(name, "settle", mode, min_seconds, max_seconds, max_steps) for name in names}

    def time_rounds(self, names, mode: str, rounds: int) -> dict[str, Timing]:
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                times[name].append(self.ask(name, "time", mode))
        return {name: Timing(values) for name, values in times.items()}

    def close(self) -> None:
        for process, connection in self.workers.values():
            try:
                connection.send(("stop",))
            except (OSError, ValueError):
                pass
        for process, connection in self.workers.values():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
            connection.close()

    def __enter__(self) -> "Lockstep":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
