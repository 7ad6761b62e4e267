"""`python -m bench.speed_paths`: what each hand-written CPU speed path gains over its plain
PyTorch twin, on the step it speeds up. A path has to gain at least 1.3x (MIN_FACTOR) to stay.

Each factor comes from one run: the two versions are stepped in turn, per round one untimed and
one timed call of each (a timed call follows an untimed one, as training steps follow each
other), in an order swapped every round; the factor is the median over rounds of plain time /
fast time, so load from other processes that comes and goes divides out.

Paths, and the step each is measured on (CapsNet's sizes, batch 64 unless --batch says otherwise):
- routing_sweeps: the C++ routing kernels (models/routing_sweeps.py, models/cpu/csrc) against
  the same routing in PyTorch ops (`torch_sweeps()`), on DigitCaps forward and backward (votes,
  3 routing iterations, gradients of u and W), float32;
- dft_conv, dft_conv_bf16: the DFT PrimaryCaps convolution (models/cpu/dft_conv.py) against
  F.conv2d (oneDNN), forward and backward, float32 and under CPU bf16 autocast (the latter only
  where the CPU has bf16 matrix units).
Paths measured below 1.3x were removed (2 threads; 1 thread on a loaded machine): the reuse of
large buffers between steps, 1.17x (1.15x) on a CapsNet training step; the C++ polyphase layouts
of the DFT convolution, 1.10x (1.14x) on its forward and backward; glibc's malloc thresholds
pinned, 1.06x (1.06x) on a CapsNet training step after steps at half its batch, each version in a
process of its own. Together the three had made the training step about 1.3x faster (351 against
453 ms at batch 64, 2 threads, in two runs one after the other).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from bench.timing import Timing, paired_ratio, set_threads
from models.capsnet import CapsNetConfig, DigitCaps
from models.cpu import kernels as cpu_kernels
from models.cpu.dft_conv import stride2_conv_dft
from models.fields import ConfigError
from models.routing_sweeps import torch_sweeps
from studies.training.devices import autocast, cpu_bf16_isa

MIN_FACTOR = 1.3
PATHS = ("routing_sweeps", "dft_conv", "dft_conv_bf16")
EXIT_BAD_INPUT = 2


@dataclasses.dataclass
class PathResult:
    path: str
    step: str
    fast_ms: float | None = None
    plain_ms: float | None = None
    factor: float | None = None  # median over rounds of plain time / fast time
    rounds: int = 0
    skipped: str | None = None  # why it was not measured here

    @property
    def verdict(self) -> str:
        if self.factor is None:
            return f"skipped: {self.skipped}"
        return "pays" if self.factor >= MIN_FACTOR else f"below {MIN_FACTOR}x"


def interleave(fast: Callable[[], object], plain: Callable[[], object], rounds: int) -> tuple[Timing, Timing]:
    """The two versions timed in turn (see the module docstring); Timings whose i-th runs share a round."""
    times: dict[str, list[float]] = {"fast": [], "plain": []}
    for index in range(rounds):
        for name in ("fast", "plain") if index % 2 == 0 else ("plain", "fast"):
            fn = fast if name == "fast" else plain
            fn()
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return Timing(times["fast"]), Timing(times["plain"])


def _measured(path: str, step: str, fast: Timing, plain: Timing) -> PathResult:
    return PathResult(path, step, 1e3 * fast.median, 1e3 * plain.median, paired_ratio(plain, fast), len(fast.times))


def routing_sweeps(batch: int, rounds: int) -> PathResult:
    step = f"DigitCaps forward + backward, batch {batch}, 3 iterations, float32"
    if cpu_kernels.module() is None:
        return PathResult("routing_sweeps", step, skipped=f"no C++ kernels ({cpu_kernels.error()})")
    torch.manual_seed(0)
    layer = DigitCaps(CapsNetConfig())
    children, parents, child_dim, dim = layer.weight.shape
    u = (0.05 * torch.randn(batch, children, child_dim)).requires_grad_()  # primary capsules' scale
    grad_v = torch.randn(batch, parents, dim)

    def fast():
        torch.autograd.grad(layer(u), (u, layer.weight), grad_v)

    def plain():
        with torch_sweeps():
            fast()

    return _measured("routing_sweeps", step, *interleave(fast, plain, rounds))


def dft_conv(batch: int, rounds: int, bf16: bool) -> PathResult:
    path = "dft_conv_bf16" if bf16 else "dft_conv"
    step = f"PrimaryCaps convolution forward + backward, batch {batch}, {'bf16 autocast' if bf16 else 'float32'}"
    if bf16 and cpu_bf16_isa() is None:
        return PathResult(path, step, skipped="this CPU has no bf16 matrix units")
    generator = torch.Generator().manual_seed(0)
    # Conv1's output after its ReLU (bf16 under autocast, as CapsNet hands it over), the layer's weights
    h = torch.rand(batch, 256, 20, 20, generator=generator).to(torch.bfloat16 if bf16 else torch.float32)
    w = 0.01 * torch.randn(256, 256, 9, 9, generator=generator)
    b = torch.zeros(256)
    grad_y = torch.randn(batch, 256, 6, 6, generator=generator)
    inputs = tuple(t.requires_grad_() for t in (h, w, b))
    device = torch.device("cpu")

    def run(conv):
        with autocast(device, bf16):
            y = conv(*inputs)
        torch.autograd.grad(y, inputs, grad_y.to(y.dtype))

    def direct(h, w, b):
        return F.conv2d(h, w, b, stride=2)

    return _measured(path, step, *interleave(lambda: run(stride2_conv_dft), lambda: run(direct), rounds))


def measure(paths: tuple[str, ...], batch: int, rounds: int, threads: int | None) -> list[PathResult]:
    set_threads(threads)
    results = []
    for path in paths:
        if path == "routing_sweeps":
            results.append(routing_sweeps(batch, rounds))
        else:
            results.append(dft_conv(batch, rounds, bf16=path == "dft_conv_bf16"))
        print(_line(results[-1]), file=sys.stderr, flush=True)
    return results


def _line(result: PathResult) -> str:
    if result.factor is None:
        return f"{result.path}: {result.verdict}"
    return (f"{result.path}: {result.factor:.2f}x ({result.fast_ms:.1f} ms vs {result.plain_ms:.1f} ms plain, "
            f"median of {result.rounds} rounds) on {result.step}: {result.verdict}")


def _positive(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed_paths", description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, default all: {', '.join(PATHS)}")
    parser.add_argument("--batch", default="64", help="batch size (default 64)")
    parser.add_argument("--rounds", default="15", help="interleaved rounds per path (default 15)")
    parser.add_argument("--threads", help="intra-op threads (default: the usable cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
        unknown = [p for p in paths if p not in PATHS]
        if unknown or not paths:
            raise ConfigError(f"unknown speed path {(unknown or [''])[0]!r}; valid: {', '.join(PATHS)}")
        batch, rounds = _positive(args.batch, "--batch"), _positive(args.rounds, "--rounds")
        threads = _positive(args.threads, "--threads") if args.threads is not None else None
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results = measure(paths, batch, rounds, threads)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) | {"verdict": r.verdict} for r in results], indent=2))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 ISA: {cpu_bf16_isa() or 'none'}")
        print("| path | step | fast ms | plain ms | factor | rounds | verdict |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            numbers = ("-",) * 3 if r.factor is None else (f"{r.fast_ms:.1f}", f"{r.plain_ms:.1f}", f"{r.factor:.2f}x")
            print(f"| {r.path} | {r.step} | {' | '.join(numbers)} | {r.rounds} | {r.verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
