"""Which hand-written CPU speed path a training run uses, measured on the CPU at hand.

The speed paths (models/speed_paths.py) compute the same functions as their plain twins; which
one is faster depends on the CPU (its vector units, caches, matrix units), the thread count, the
dtype and the shapes. So, as `cudnn.benchmark` does for convolutions, the choice is made by a
short paired measurement where the run happens: each candidate and the plain twin are stepped in
turn (3 to 5 rounds) on the step they speed up (PrimaryCaps' convolution, forward and backward; DigitCaps'
votes and routing, forward and backward), per round one untimed and one timed call of each, in an
order rotated every round; a candidate's factor is the median over rounds of plain time /
candidate time, so load from other processes that comes and goes divides out. A candidate runs
only where its factor reaches `MIN_FACTOR`; the fastest such one wins, else the plain twin.

A choice is made once per CPU model, thread count, torch version, dtype and shape, kept in a
small cache file (`CAPSBENCH_CACHE`, default ~/.cache/capsbench) and reused; the study engine
stores the plan with the study (every worker uses the same) and with each trial, and a resumed
run keeps the plan its checkpoint was started with, so results never depend on a second noisy
measurement. Off the CPU there is nothing to choose (no plan: each path's own rule).
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import statistics
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from models import speed_paths
from models.capsnet import DigitCaps, PrimaryCaps
from models.cpu import kernels as cpu_kernels
from models.cpu.dft_conv import stride2_conv_dft
from models.routing import votes_and_route
from models.speed_paths import MIN_FACTOR, SpeedPlan
from studies.data.atomic_save import write_text_atomically
from studies.training.devices import autocast, cpu_model
from studies.write_faults import WriteFailed

ROUNDS = 5
# A factor this far from MIN_FACTOR (a ratio, either way) after 3 rounds decides without the rest.
DECISIVE = 1.2
CACHE_ENV = "CAPSBENCH_CACHE"
CACHE_FILE = "speed-plans.json"
PLAIN_ROUTING, PLAIN_CONV = speed_paths.PLAIN["routing"], speed_paths.PLAIN["primary_conv"]


@dataclass
class Choice:
    """A measured plan and what it rests on; `plan` None where no hand-written path applies."""

    key: str
    plan: SpeedPlan | None
    # candidate -> median over rounds of plain time / its time, e.g. {"routing kernels": 1.54}
    factors: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    measured_at: str = ""
    reused: bool = False  # taken from the cache or the study rather than measured now

    @property
    def why(self) -> str:
        if self.plan is None:
            return "no hand-written CPU path applies"
        measured = ", ".join(f"{name} {factor:.2f}x" for name, factor in self.factors.items()) or "nothing to measure"
        origin = "reused" if self.reused else "measured now"
        return f"{measured} against the plain twin (median of {self.rounds} paired rounds, {origin}; " \
               f"a path runs from {MIN_FACTOR}x)"

    def to_dict(self) -> dict:
        return {"key": self.key, "plan": self.plan.to_dict() if self.plan else None, "factors": self.factors,
                "rounds": self.rounds, "measured_at": self.measured_at}

    @classmethod
    def from_dict(cls, values: dict, reused: bool = True) -> "Choice":
        plan = SpeedPlan.from_dict(values["plan"]) if values.get("plan") else None
        return cls(values["key"], plan, dict(values.get("factors", {})), int(values.get("rounds", 0)),
                   values.get("measured_at", ""), reused)


# --- where a model has speed paths, and their shapes -----------------------------------------


@dataclass
class Sites:
    """The inputs that reach a model's speed paths in one training step (shapes and the layers)."""

    conv: tuple[PrimaryCaps, torch.Size] | None = None
    routing: tuple[DigitCaps, torch.Size] | None = None

    def parts(self) -> list[tuple[str, tuple, str]]:
        """(plan field, site, description) of each site found: what one cache entry is about."""
        parts = []
        if self.routing is not None:
            layer, shape = self.routing
            _, parents, _, dim = layer.weight.shape
            config = layer.config
            iters = _iterations(config)
            iterations = f"{iters} iteration{'s' if iters > 1 else ''}"
            described = f"routing {'x'.join(map(str, shape))} -> {parents}x{dim}, {iterations}"
            parts.append(("routing", self.routing, described + (", inner detached" if config.detach_inner else "")))
        if self.conv is not None:
            layer, shape = self.conv
            weight = layer.conv.weight.shape
            parts.append(("primary_conv", self.conv, f"PrimaryCaps {'x'.join(map(str, shape))} -> {weight[0]} "
                                                     f"channels {weight[2]}x{weight[3]}/2"))
        return parts

    def describe(self) -> str:
        return "; ".join(description for _, _, description in self.parts())


class _AllSeen(Exception):
    """Ends the meta forward once every site's input has been seen."""


def find_sites(model: torch.nn.Module, batch: int, channels: int, height: int, width: int) -> Sites:
    """The inputs of `model`'s first PrimaryCaps layer left at `primary_conv="auto"` and of its first
    routing layer, seen by hooks in a forward of a copy of it on the meta device (shapes only, no
    arithmetic), which ends as soon as both have been seen."""
    sites = Sites()
    wanted = {"conv": _first(model, _has_conv_path), "routing": _first(model, _has_routing_path)}
    wanted = {name: layer for name, layer in wanted.items() if layer is not None}
    if not wanted:
        return sites
    shadow = copy.deepcopy(model).to("meta")
    by_name = dict(model.named_modules())
    handles = []

    def seen(name: str, real: torch.nn.Module):
        def hook(module, args):
            setattr(sites, name, (real, args[0].shape))
            if all(getattr(sites, wanted_name) is not None for wanted_name in wanted):
                raise _AllSeen

        return hook

    for path, fake in shadow.named_modules():
        for name, layer in wanted.items():
            if by_name.get(path) is layer:
                handles.append(fake.register_forward_pre_hook(seen(name, layer)))
    try:
        shadow.train()
        with torch.no_grad(), contextlib.suppress(_AllSeen):
            per_example = getattr(model, "labels_per_example", 1)  # two for MultiMNIST's models
            shape = (batch,) if per_example == 1 else (batch, per_example)
            labels = torch.zeros(shape, dtype=torch.long, device="meta")
            shadow(torch.zeros(batch, channels, height, width, device="meta"), labels)
    finally:
        for handle in handles:
            handle.remove()
    return sites


def _first(model: torch.nn.Module, test: Callable[[torch.nn.Module], bool]) -> torch.nn.Module | None:
    return next((module for module in model.modules() if test(module)), None)


def _has_conv_path(module: torch.nn.Module) -> bool:
    return isinstance(module, PrimaryCaps) and module.method == "auto"


def _has_routing_path(module: torch.nn.Module) -> bool:
    return isinstance(module, DigitCaps) and _routes_dynamically(module)


def _iterations(config) -> int:
    """The routing iterations a layer runs: "uniform" is dynamic routing's first iteration alone."""
    return 1 if getattr(config, "routing", "dynamic") == "uniform" else config.routing_iters


def _routes_dynamically(layer: DigitCaps) -> bool:
    """Whether the layer routes through `votes_and_route`, the only routing with speed paths."""
    return getattr(layer.config, "routing", "dynamic") in ("dynamic", "uniform")


# --- the paired measurement ------------------------------------------------------------------


def interleave(candidates: dict[str, Callable[[], object]], rounds: int,
               settled: Callable[[dict[str, list[float]]], bool] | None = None,
               min_rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per timed call of each candidate; the i-th times of all candidates share a round.
    With `settled`, stops after `min_rounds` rounds as soon as it says the times decide."""
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        if settled is not None and index >= min_rounds and settled(times):
            break
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            candidates[name]()
            started = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - started)
    return times


def paired_factors(times: dict[str, list[float]], plain: str) -> dict[str, float]:
    """Each candidate's median over rounds of plain time / its time."""
    return {name: statistics.median(p / t for p, t in zip(times[plain], own, strict=True))
            for name, own in times.items() if name != plain}


def pick(factors: dict[str, float], plain: str) -> str:
    """The fastest candidate that reaches MIN_FACTOR, else the plain twin."""
    paying = {name: factor for name, factor in factors.items() if factor >= MIN_FACTOR}
    return max(paying, key=paying.get) if paying else plain


def conv_steps(layer: PrimaryCaps, shape: torch.Size, bf16: bool) -> dict[str, Callable[[], None]]:
    """PrimaryCaps' convolution forward and backward, through the DFT and through F.conv2d."""
    generator = torch.Generator().manual_seed(0)
    h = torch.rand(shape, generator=generator).to(torch.bfloat16 if bf16 else torch.float32)
    weight = layer.conv.weight.detach().clone()
    bias = layer.conv.bias.detach().clone()
    inputs = tuple(t.requires_grad_() for t in (h, weight, bias))
    device = torch.device("cpu")
    grad_y: list[torch.Tensor] = []

    def run(conv) -> None:
        with autocast(device, bf16):
            y = conv(*inputs)
        if not grad_y:
            grad_y.append(torch.randn(y.shape, generator=generator))
        torch.autograd.grad(y, inputs, grad_y[0].to(y.dtype))

    return {"dft": lambda: run(stride2_conv_dft), PLAIN_CONV: lambda: run(lambda h, w, b: F.conv2d(h, w, b, stride=2))}


def routing_steps(layer: DigitCaps, shape: torch.Size,
                  paths: tuple[str, ...] | None = None) -> dict[str, Callable[[], None]]:
    """Votes and routing forward and backward (the gradients of u and W) under each routing path:
    `paths`, or the hand-written one this machine has (the C++ kernels, else the sweeps in PyTorch
    ops, which stand in for them only where they cannot be built) and the plain twin."""
    generator = torch.Generator().manual_seed(0)
    u = (0.05 * torch.randn(shape, generator=generator)).requires_grad_()  # primary capsules' scale
    weight = layer.weight.detach().clone().requires_grad_()
    config = layer.config
    _, parents, _, dim = weight.shape
    grad_v = torch.randn(shape[0], parents, dim, generator=generator)

    def run(path: str) -> None:
        with speed_paths.using(SpeedPlan(routing=path)):  # the backward reads the plan too
            v = votes_and_route(u, weight, _iterations(config), config.detach_inner)
            torch.autograd.grad(v, (u, weight), grad_v)

    if paths is None:
        paths = ("kernels" if cpu_kernels.module() is not None else "sweeps", PLAIN_ROUTING)
    return {path: (lambda path=path: run(path)) for path in paths}


def clear_of_the_threshold(plain: str) -> Callable[[dict[str, list[float]]], bool]:
    """Whether every candidate's factor so far is well clear of MIN_FACTOR (by DECISIVE either way),
    so that more rounds would not change the choice."""

    def settled(times: dict[str, list[float]]) -> bool:
        factors = paired_factors(times, plain)
        return all(f >= MIN_FACTOR * DECISIVE or f <= MIN_FACTOR / DECISIVE for f in factors.values())

    return settled


def measure_site(kind: str, site: tuple, bf16: bool, rounds: int = ROUNDS) -> tuple[str, dict[str, float], int]:
    """The path chosen for one site (`kind` "routing" or "primary_conv"), every candidate's factor over
    its plain twin (named like "routing kernels") and the rounds measured: at least 3, all `rounds`
    where a factor is near MIN_FACTOR."""
    plain, label = (PLAIN_ROUTING, "routing") if kind == "routing" else (PLAIN_CONV, "PrimaryCaps")
    with torch.random.fork_rng(devices=[]):
        steps = routing_steps(*site) if kind == "routing" else conv_steps(*site, bf16)
        times = interleave(steps, rounds, clear_of_the_threshold(plain))
    found = paired_factors(times, plain)
    return pick(found, plain), {f"{label} {name}": factor for name, factor in found.items()}, len(times[plain])


# --- the cache -------------------------------------------------------------------------------


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "capsbench"


def _read_cache() -> dict:
    try:
        data = json.loads((cache_path() / CACHE_FILE).read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: measured again
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    """Adds an entry to the cache file, under a lock so that processes writing at once keep each
    other's entries; a cache that cannot be written only costs a measurement."""
    with contextlib.suppress(OSError, WriteFailed):
        cache_path().mkdir(parents=True, exist_ok=True)
        with open(cache_path() / f"{CACHE_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read_cache()
            data[key] = entry
            write_text_atomically(cache_path() / CACHE_FILE, json.dumps(data, indent=1, sort_keys=True))


def _valid_entry(entry, kind: str) -> bool:
    valid = typing.get_args(speed_paths.Routing if kind == "routing" else speed_paths.PrimaryConv)
    return (isinstance(entry, dict) and entry.get("path") in valid and isinstance(entry.get("factors"), dict)
            and isinstance(entry.get("rounds"), int) and isinstance(entry.get("measured_at"), str))


@dataclass
class Situation:
    """What a choice depends on (`key`: the CPU, threads, torch and kernel build, dtype and
    shapes), and where the model's paths are."""

    key: str
    sites: Sites
    bf16: bool
    machine: str  # the key's first part: CPU, threads, torch, kernel build, dtype


def situation(model: torch.nn.Module, images: tuple[int, int, int, int], bf16: bool) -> Situation | None:
    """Where training `model` on batches of shape `images` has paths to choose; None for a model
    off the CPU or without any."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return None
    batch, channels, height, width = images
    sites = find_sites(model, batch, channels, height, width)
    if sites.conv is None and sites.routing is None:
        return None
    machine = (f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | "
               f"kernels {cpu_kernels.version()} | {'bf16' if bf16 else 'float32'}")
    return Situation(f"{machine} | {sites.describe()}", sites, bf16, machine)


def choose(where: Situation, reuse: bool = True) -> Choice:
    """The plan for this situation, site by site: from the cache where a site was measured before on
    this machine (unless `reuse` is False), else measured now and cached."""
    cache = _read_cache() if reuse else {}
    paths: dict[str, str | None] = {"routing": None, "primary_conv": None}
    factors: dict[str, float] = {}
    rounds, when, reused = [], [], True
    for kind, site, description in where.sites.parts():
        key = f"{where.machine} | {description}"
        entry = cache.get(key)
        if not _valid_entry(entry, kind):
            path, found, measured_rounds = measure_site(kind, site, where.bf16)
            entry = {"path": path, "factors": found, "rounds": measured_rounds,
                     "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _write_cache(key, entry)
            reused = False
        paths[kind] = entry["path"]
        factors.update(entry["factors"])
        rounds.append(entry["rounds"])
        when.append(entry["measured_at"])
    return Choice(where.key, SpeedPlan(**paths), factors, min(rounds), max(when), reused)


def measured_plan(model: torch.nn.Module, images: tuple[int, int, int, int], bf16: bool) -> SpeedPlan | None:
    """A `SpeedSource` (studies/training/loop.py) for a run outside a study: this machine's cached
    or measured choice."""
    choice = plan_for(model, images, bf16)
    return None if choice is None else choice.plan


def plan_for(model: torch.nn.Module, images: tuple[int, int, int, int], bf16: bool,
             reuse: bool = True) -> Choice | None:
    """`situation` then `choose`: the choice for training `model` on batches of shape `images`."""
    where = situation(model, images, bf16)
    return None if where is None else choose(where, reuse)
