"""`python -m bench.speed_paths`: what each hand-written CPU speed path gains over its plain PyTorch
twin on the step it speeds up, measured here, now, as training measures it before choosing
(studies/training/speed_choice.py: paired rounds, the order rotated every round, the factor the
median over rounds of plain time / path time). A path runs only where it reaches 1.3x
(`models.speed_paths.MIN_FACTOR`).

Paths, on CapsNet's sizes at the given batch:
- routing_kernels: the hand-scheduled routing with its C++ sweeps (models/routing_sweeps.py,
  models/cpu/csrc) against Procedure 1 in plain ops with autograd (`route_with_autograd`), on
  DigitCaps' votes and 3 routing iterations forward and backward (gradients of u and W), float32;
- routing_sweeps: the same hand-scheduled routing in PyTorch ops (what runs where the kernels
  cannot be built) against the same twin;
- dft_conv, dft_conv_bf16: the DFT PrimaryCaps convolution (models/cpu/dft_conv.py) against
  F.conv2d (oneDNN), forward and backward, float32 and under CPU bf16 autocast (the latter only
  where the CPU has bf16 matrix units).
What each path's measurements were where it was written, and the paths removed for measuring
below 1.3x, are in bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

import torch

from bench.timing import set_threads
from models.capsnet import CapsNetConfig, DigitCaps, PrimaryCaps
from models.cpu import kernels as cpu_kernels
from models.fields import ConfigError
from models.speed_paths import MIN_FACTOR
from studies.training import speed_choice
from studies.training.devices import cpu_bf16_isa

PATHS = ("routing_kernels", "routing_sweeps", "dft_conv", "dft_conv_bf16")
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


def _measured(path: str, step: str, steps: dict, fast: str, plain: str, rounds: int) -> PathResult:
    times = speed_choice.interleave({fast: steps[fast], plain: steps[plain]}, rounds)
    factor = speed_choice.paired_factors(times, plain)[fast]
    return PathResult(path, step, 1e3 * statistics.median(times[fast]), 1e3 * statistics.median(times[plain]),
                      factor, rounds)


def routing(path: str, batch: int, rounds: int) -> PathResult:
    fast = path.removeprefix("routing_")
    step = f"DigitCaps votes + routing forward + backward, batch {batch}, 3 iterations, float32"
    if fast == "kernels" and cpu_kernels.module() is None:
        return PathResult(path, step, skipped=f"no C++ kernels ({cpu_kernels.error()})")
    torch.manual_seed(0)
    config = CapsNetConfig()
    shape = torch.Size((batch, config.num_primary, config.primary_dim))
    steps = speed_choice.routing_steps(DigitCaps(config), shape, paths=(fast, speed_choice.PLAIN_ROUTING))
    return _measured(path, step, steps, fast, speed_choice.PLAIN_ROUTING, rounds)


def dft_conv(batch: int, rounds: int, bf16: bool) -> PathResult:
    path = "dft_conv_bf16" if bf16 else "dft_conv"
    step = f"PrimaryCaps convolution forward + backward, batch {batch}, {'bf16 autocast' if bf16 else 'float32'}"
    if bf16 and cpu_bf16_isa() is None:
        return PathResult(path, step, skipped="this CPU has no bf16 matrix units")
    torch.manual_seed(0)
    config = CapsNetConfig()
    layer = PrimaryCaps(config.conv1_channels, config.primary_types, config.primary_dim)
    side = config.input_size - 8
    steps = speed_choice.conv_steps(layer, torch.Size((batch, config.conv1_channels, side, side)), bf16)
    return _measured(path, step, steps, "dft", speed_choice.PLAIN_CONV, rounds)


def measure(paths: tuple[str, ...], batch: int, rounds: int, threads: int | None) -> list[PathResult]:
    set_threads(threads)
    results = []
    for path in paths:
        if path.startswith("routing_"):
            results.append(routing(path, batch, rounds))
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
