"""`python -m bench.gpu_check` (`make gpu-check`): the one prepared check for a CUDA machine, sized
to finish within 8 minutes on one H200. Stages, in this order, each only if enough of the time
budget is left (a skipped stage is named in the log with the reason):

1. the `cuda` tests (tests/test_cuda.py);
2. training speed: `studies.training.train.train` on full MNIST (a random stand-in of the same size
   where data/MNIST/raw is missing: the speed is the same), batch 128, bf16, shift2, compile "auto",
   for capsnet, cnn_pool and cnn_paper; two epochs, so that the second is timed without the
   compilation; CapsNet's target is 30,000 training images/s (batch 128, 3 routing iterations,
   decoder, bf16);
3. the bench on CUDA (`python -m bench`, quick profile, batch sizes 32-512): bf16 with the routing
   comparison, fp32, and bf16 compiled for CapsNet at batch 128 and 512 (every model, batch size and
   mode compiles anew, 20-60 s each: all of them would not fit).

Writes results/gpu/: the bench's throughput tables (throughput-cuda-*.csv/.md) and gpu-check.log
(what ran, what was skipped and why, epoch times and images/s, the test summary). Without CUDA it
runs the tests (which skip), skips the rest saying so, and exits 0; on CUDA the exit code is 1
when a stage failed.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "gpu"
TRAIN_MODELS = ("capsnet", "cnn_pool", "cnn_paper")
CAPSNET_TARGET = 30_000  # training images/s, batch 128, r = 3, decoder, bf16, on one H200
# Rough lengths on one H200 (estimates, not measured here), for deciding what still fits in the budget.
NEEDS_S = {"train": 60, "bench": 100, "bench_compiled": 150}


class Log:
    """Lines to the console and to results/gpu/gpu-check.log."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("w")
        self.started = time.perf_counter()

    def __call__(self, line: str) -> None:
        stamped = f"[{time.perf_counter() - self.started:6.0f} s] {line}"
        print(stamped, flush=True)
        self.handle.write(stamped + "\n")
        self.handle.flush()

    def left(self, budget_s: float) -> float:
        return budget_s - (time.perf_counter() - self.started)


def _run(command: list[str], timeout_s: float, log: Log) -> bool:
    """A stage in a process of its own, killed at its share of the budget; its output's tail in the log."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    # cuBLAS is deterministic only with a fixed workspace, chosen before its first use in a process
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    log("$ python " + " ".join(command[1:]))
    # A session of its own, so that a stage stopped at its time stops with its workers.
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        log(f"STOPPED after {timeout_s:.0f} s, its share of the budget")
    for line in output.strip().splitlines()[-12:]:
        log("    " + line)
    return process.returncode == 0


def _mnist_splits(device: torch.device):
    """Full MNIST on the device, or a random stand-in of its size and a line saying which."""
    from studies.data import datasets
    from studies.training.config import TrainConfig
    from studies.training.train import Split, load_splits

    raw = datasets.default_data_root() / datasets.get_info("mnist").folder / "raw"
    if all((raw / name).exists() for split in ("train", "test") for name in datasets.split_files(split)):
        return load_splits(TrainConfig(device=str(device)), device), f"MNIST from {raw}"
    generator = torch.Generator().manual_seed(0)

    def split(size):
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images.to(device), torch.randint(0, 10, (size,), generator=generator).to(device))

    return (split(60_000), None, split(10_000)), f"a random stand-in of MNIST's size ({raw} is missing)"


def train_speed(log: Log, budget_s: float) -> bool:
    from studies.training.config import TrainConfig
    from studies.training.train import train

    device = torch.device("cuda")
    splits, source = _mnist_splits(device)
    log(f"training speed on {source}: {len(splits[0]):,} images per epoch, batch 128, bf16, shift2, compile "
        f"auto; epoch 1 includes the compilation, epoch 2 is timed alone")
    ok = True
    for name in TRAIN_MODELS:
        if log.left(budget_s) < NEEDS_S["train"]:
            log(f"SKIPPED training {name}: {log.left(budget_s):.0f} s of the budget left")
            continue
        config = TrainConfig(model=name, epochs=2, batch_size=128, bf16=True, augmentation="shift2",
                             device="cuda", progress=False)
        try:
            result = train(config, splits=splits)
        except Exception as error:  # a failure is reported and the other models still run
            log(f"FAILED training {name}: {type(error).__name__}: {error}")
            ok = False
            continue
        first, second = result.history
        epoch_s = second["seconds"] - first["seconds"]
        rate = (second["images"] - first["images"]) / epoch_s
        line = (f"{name}: epoch 1 {first['seconds']:.1f} s (with compilation), epoch 2 {epoch_s:.2f} s = "
                f"{rate:,.0f} training images/s; test accuracy {result.test_accuracy:.4f}")
        if name == "capsnet":
            line += f"; target >= {CAPSNET_TARGET:,} images/s: {'met' if rate >= CAPSNET_TARGET else 'NOT met'}"
        log(line)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds (default 480)")
    parser.add_argument("--out", default=str(OUT), help=f"results directory (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    out = Path(args.out)
    log = Log(out / "gpu-check.log")
    cuda = torch.cuda.is_available()
    log(f"torch {torch.__version__}, " + (f"{torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}"
                                          if cuda else "no CUDA device: only the tests run (and skip)"))
    ok = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"],
              max(60.0, min(300.0, log.left(args.budget_s) - 60)), log)
    if not cuda:
        log("SKIPPED (no CUDA device): the cuda tests (collected and skipped above), the training speeds "
            "and the bench on CUDA (fp32, bf16, bf16 compiled); nothing else to do here")
        return 0
    ok &= train_speed(log, args.budget_s)
    def bench(models: str, batch_sizes: str, *options: str) -> list[str]:
        return [sys.executable, "-m", "bench", "--device", "cuda", "--profile", "quick", "--out", str(out),
                "--models", models, "--batch-sizes", batch_sizes, *options]

    every, sizes = ",".join(TRAIN_MODELS), "32,64,128,256,512"
    stages = [
        ("bench bf16 with the routing comparison", bench(every, sizes, "--bf16"), "bench"),
        ("bench fp32", bench(every, sizes, "--no-references"), "bench"),
        ("bench bf16 compiled", bench("capsnet", "128,512", "--bf16", "--compile", "--no-references"), "bench_compiled"),
    ]
    for what, command, kind in stages:
        left = log.left(args.budget_s)
        if left < NEEDS_S[kind]:
            log(f"SKIPPED {what}: {left:.0f} s of the budget left, it needs about {NEEDS_S[kind]} s")
            continue
        ok &= _run(command, left, log)
    verdict = "all stages that ran passed" if ok else "a stage FAILED"
    log(f"done in {time.perf_counter() - log.started:.0f} s: {verdict}; results in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
