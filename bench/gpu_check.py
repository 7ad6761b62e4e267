"""`python -m bench.gpu_check` (`make gpu-check`): the one prepared check for a CUDA machine, planned to
finish within 8 minutes on one H200. Every stage runs in a process of its own under its own time
limit, with its full output in OUT/logs/<stage>.log and its results written as it goes, so a stage
that fails, hangs or is stopped at its limit costs only itself. In this order:

1. environment: torch, its CUDA build, the driver and GPUs `nvidia-smi` lists, and what torch sees;
2. training speed, one stage per model (capsnet, cnn_pool, cnn_paper): `studies.training.loop.train`
   on full MNIST (a random stand-in of the same size where data/MNIST/raw is missing: the speed is
   the same), batch 128, bf16, shift2, compile "auto", two epochs so that the second is timed
   without the compilation; each epoch's record is appended to train-<model>.jsonl as it ends, the
   speeds to train-<model>.json. CapsNet's target is 30,000 training images/s;
3. the `cuda` tests (tests/test_cuda.py; cuda-tests.xml);
4. the bench on CUDA (`python -m bench`, quick profile; each row appended to its
   throughput-cuda-*.rows.csv as it is measured, the tables written when a stage ends): bf16, the
   routing comparison (in routing-comparison/), fp32, and CapsNet compiled at batch 128 (each
   model, batch size and mode compiles anew).

summary.json and summary.md, rewritten after every stage, give each stage's status (passed, failed,
skipped with its reason, or stopped at its limit), time and headline figure; gpu-check.log has the
run's own lines. The exit code is 1 when a stage failed, or when nvidia-smi lists a GPU that torch
cannot use (a CUDA build newer than the driver, or a CPU build of torch): the log then names torch,
its CUDA, the driver and the GPUs, and every CUDA stage is skipped. Without CUDA and without a GPU
the CUDA stages are skipped, each named, and the exit code is 0.

This module imports nothing beyond the standard library until a stage's own process does, so it
runs where torch's stack is only partly installed and says which stage that breaks.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "gpu"
BUDGET_S = 480.0
TRAIN_MODELS = ("capsnet", "cnn_pool", "cnn_paper")
CAPSNET_TARGET = 30_000  # training images/s, batch 128, r = 3, decoder, bf16, on one H200
# A stage that would get less than this is skipped rather than started to be stopped.
MIN_STAGE_S = 10.0
# nvidia-smi answers in well under a second; a hung driver must not take the budget with it.
NVIDIA_SMI_TIMEOUT_S = 5.0
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Stage:
    name: str  # also its log's name: logs/<name>.log
    what: str
    argv: tuple[str, ...]  # after `python`
    # Seconds before it is stopped. The limits are estimates for one H200 (not measured here) and
    # add up, with the environment's, to the 8-minute budget.
    limit_s: float
    results: tuple[str, ...] = ()  # its result files, relative to OUT
    headline: Callable[[Path, str], str] = lambda out, output: ""


@dataclass
class Outcome:
    name: str
    what: str
    status: str  # passed, failed, skipped, stopped
    reason: str = ""
    seconds: float | None = None
    limit_s: float | None = None
    headline: str = ""
    log: str = ""
    results: tuple[str, ...] = ()


# ---- the stages' headlines, read from their result files and output --------------------------------------------

def _train_headline(model: str) -> Callable[[Path, str], str]:
    def headline(out: Path, output: str) -> str:
        eager = "; compilation failed, trained eagerly" if "torch.compile failed" in output else ""
        speeds = out / f"train-{model}.json"
        if speeds.exists():
            result = json.loads(speeds.read_text())
            line = (f"{result['images_per_s']:,.0f} training images/s (epoch 2, {result['epoch2_s']:.2f} s; epoch 1 "
                    f"with compilation {result['epoch1_s']:.1f} s), test accuracy {result['test_accuracy']:.4f}")
            if model == "capsnet":
                met = result["images_per_s"] >= CAPSNET_TARGET
                line += f"; target {CAPSNET_TARGET:,}: {'met' if met else 'NOT met'}"
            return line + eager
        epochs = out / f"train-{model}.jsonl"
        records = [json.loads(line) for line in epochs.read_text().splitlines()] if epochs.exists() else []
        if not records:
            return "no epoch ended" + eager
        return f"{len(records)} epoch(s) ended, the first after {records[0]['seconds']:.1f} s" + eager
    return headline


def _tests_headline(out: Path, output: str) -> str:
    counts = re.compile(r"\b\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b")
    for line in reversed(output.splitlines()):
        if counts.search(line):
            return line.strip(" =")
    return ""


def _bench_headline(stem: str) -> Callable[[Path, str], str]:
    def headline(out: Path, output: str) -> str:
        table, measured = out / f"{stem}.csv", out / f"{stem}.rows.csv"  # finished, or as far as it got
        path = table if table.exists() else measured
        if not path.exists():
            return "no row measured"
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        line = f"{len(rows)} rows" + ("" if path == table else " (stopped before its tables were written)")
        capsnet = [r for r in rows if r["model"] == "capsnet" and r["mode"] == "train"]
        compared = [r for r in capsnet if r["section"] == "routing"]
        if compared:
            line += (f"; CapsNet training {float(compared[0]['images_per_s']):,.0f} images/s, "
                     f"{float(compared[0]['speedup_vs_reference_c']):.2f}x reference (c)")
        elif capsnet:
            best = max(capsnet, key=lambda r: float(r["images_per_s"]))
            line += f"; CapsNet training at most {float(best['images_per_s']):,.0f} images/s (batch {best['batch']})"
        return line
    return headline


def plan(out: Path) -> list[Stage]:
    """The CUDA stages in the order they run (training speed first: the figure this check is for)."""
    def bench(out_dir: Path, models: str, batch_sizes: str, *options: str) -> tuple[str, ...]:
        return ("-m", "bench", "--device", "cuda", "--profile", "quick", "--out", str(out_dir), "--models", models,
                "--batch-sizes", batch_sizes, *options)

    every = ",".join(TRAIN_MODELS)
    routing = out / "routing-comparison"
    # CapsNet's first epoch carries its compilation (20-60 s); the CNNs compile in seconds.
    train = [Stage(f"train-{name}", f"training speed of {name} (2 epochs, batch 128, bf16, compile auto)",
                   ("-m", "bench.gpu_check", "--train-speed", name, "--out", str(out)),
                   80.0 if name == "capsnet" else 40.0, (f"train-{name}.jsonl", f"train-{name}.json"),
                   _train_headline(name))
             for name in TRAIN_MODELS]
    return train + [
        Stage("cuda-tests", "the cuda tests (tests/test_cuda.py)",
              ("-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py",
               "--junitxml", str(out / "cuda-tests.xml")), 100.0, ("cuda-tests.xml",), _tests_headline),
        _bench_stage("bench-bf16", "bench, bf16, every model at batch 32, 128, 512",
                     bench(out, every, "32,128,512", "--bf16", "--no-references"), 45.0, "throughput-cuda-bf16"),
        # Five processes of their own, each settled before the rounds are timed.
        _bench_stage("bench-routing", "bench, bf16, CapsNet against the reference implementations (batch 64)",
                     bench(routing, "capsnet", "64", "--bf16"), 55.0, "routing-comparison/throughput-cuda-bf16"),
        _bench_stage("bench-fp32", "bench, fp32, every model at batch 128 and 512",
                     bench(out, every, "128,512", "--no-references"), 30.0, "throughput-cuda-fp32"),
        _bench_stage("bench-compiled", "bench, bf16 compiled, CapsNet at batch 128",
                     bench(out, "capsnet", "128", "--bf16", "--compile", "--no-references"), 45.0,
                     "throughput-cuda-bf16-compiled"),
    ]


def _bench_stage(name: str, what: str, argv: tuple[str, ...], limit_s: float, stem: str) -> Stage:
    """A bench stage: its rows as measured (<stem>.rows.csv) and its finished tables."""
    return Stage(name, what, argv, limit_s, (f"{stem}.csv", f"{stem}.md", f"{stem}.rows.csv"), _bench_headline(stem))


def environment_stage(out: Path) -> Stage:
    # Importing torch and starting CUDA takes seconds; a driver that hangs must not take the budget.
    return Stage("environment", "torch, CUDA, the driver and the GPUs",
                 ("-m", "bench.gpu_check", "--probe", str(out / "environment.json")), 30.0, ("environment.json",))


# ---- running stages -----------------------------------------------------------------------------------------------

class Run:
    """The run's log (console and gpu-check.log), its stages' outcomes and the summary files."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s = out, budget_s
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.handle = (out / "gpu-check.log").open("w")
        self.started = time.perf_counter()
        self.outcomes: list[Outcome] = []
        self.facts: dict = {}

    def log(self, line: str) -> None:
        stamped = f"[{self.elapsed():6.0f} s] {line}"
        print(stamped, flush=True)
        self.handle.write(stamped + "\n")
        self.handle.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def skip(self, stage: Stage, reason: str) -> None:
        self.log(f"SKIPPED {stage.name}: {reason}")
        self.record(Outcome(stage.name, stage.what, "skipped", reason, limit_s=stage.limit_s))

    def stage(self, stage: Stage) -> Outcome:
        """Run `stage` in a process of its own, killed at its limit (or at the budget's end)."""
        left = self.left()
        if left < MIN_STAGE_S:
            self.skip(stage, f"{max(left, 0):.0f} s of the {self.budget_s:.0f} s budget left")
            return self.outcomes[-1]
        limit = min(stage.limit_s, left)
        for name in stage.results:  # an earlier run's results must not pass for this one's
            (self.out / name).unlink(missing_ok=True)
        log_path = self.out / "logs" / f"{stage.name}.log"
        self.log(f"{stage.name}: {stage.what} (limit {limit:.0f} s; output in {log_path})")
        started = time.perf_counter()
        output, code, stopped = _run_logged([sys.executable, *stage.argv], limit, log_path)
        seconds = time.perf_counter() - started
        if stopped:
            status, reason = "stopped", f"stopped at its limit of {limit:.0f} s"
        elif code == 0:
            status, reason = "passed", ""
        else:
            last = next((line for line in reversed(output.splitlines()) if line.strip()), "")
            status, reason = "failed", f"exit code {code}: {last.strip()[:300]}"
        try:
            headline = stage.headline(self.out, output)
        except Exception as error:  # a result file the stage left half-written must not end the run
            headline = f"(no headline: {type(error).__name__}: {error})"
        outcome = Outcome(stage.name, stage.what, status, reason, round(seconds, 1), limit, headline,
                          str(log_path.relative_to(self.out)),
                          tuple(name for name in stage.results if (self.out / name).exists()))
        self.log(f"{stage.name}: {status.upper()} in {seconds:.0f} s" + (f" ({reason})" if reason else "")
                 + (f": {headline}" if headline else ""))
        if status == "failed":
            for line in output.splitlines()[-30:]:
                self.log("    " + line)
        self.record(outcome)
        return outcome

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.write_summary()

    def exit_code(self) -> int:
        return 1 if any(outcome.status == "failed" for outcome in self.outcomes) else 0

    def verdict(self) -> str:
        statuses = [outcome.status for outcome in self.outcomes]
        if "failed" in statuses:
            return "a stage FAILED"
        if "stopped" in statuses:
            return "no stage failed; a stage was stopped at its time limit"
        if statuses[1:] and set(statuses[1:]) == {"skipped"}:
            return "no CUDA stage ran"
        return "every stage that ran passed"

    def write_summary(self) -> None:
        summary = {"verdict": self.verdict(), "exit_code": self.exit_code(), "budget_s": self.budget_s,
                   "seconds": round(self.elapsed(), 1), **self.facts,
                   "stages": [vars(outcome) for outcome in self.outcomes]}
        _write_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        _write_atomic(self.out / "summary.md", _markdown(summary))


def _markdown(summary: dict) -> str:
    lines = [f"# gpu-check: {summary['verdict']}", "",
             f"{summary.get('environment', 'environment unknown')}. Planned within {summary['budget_s']:.0f} s; "
             f"took {summary['seconds']:.0f} s. Each stage's full output is in logs/<stage>.log. Written by "
             "`python -m bench.gpu_check`.", "",
             "| stage | status | seconds | limit (s) | headline |", "|---|---|---|---|---|"]
    for stage in summary["stages"]:
        status = stage["status"] + (f": {stage['reason']}" if stage["reason"] else "")
        seconds = "" if stage["seconds"] is None else f"{stage['seconds']:.0f}"
        limit = "" if stage["limit_s"] is None else f"{stage['limit_s']:.0f}"
        cells = [stage["name"], status, seconds, limit, stage["headline"]]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _run_logged(command: list[str], limit_s: float, log_path: Path) -> tuple[str, int | None, bool]:
    """Run `command`, each output line to `log_path` and the console as it comes; kill its whole
    process group at `limit_s`. Returns (output, exit code, stopped at the limit)."""
    # The project first; a cluster's environment modules may bring torch through PYTHONPATH too.
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    # cuBLAS is deterministic only with a fixed workspace, chosen before its first use in a process
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    lines: list[str] = []
    with log_path.open("w") as log_file:
        log_file.write("$ " + " ".join(command) + "\n")
        log_file.flush()
        # A session of its own, so that a stage stopped at its limit stops with its workers.
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                   start_new_session=True)

        def copy() -> None:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                log_file.write(line)
                log_file.flush()
                print("    " + line, end="", flush=True)

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        stopped = False
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            stopped = True
        finally:  # at its limit, when the check is interrupted, or left behind by the stage: its session goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        copier.join(timeout=10)  # a grandchild outside the group could hold the pipe open
        if stopped:
            log_file.write(f"STOPPED at its limit of {limit_s:.0f} s\n")
    return "\n".join(lines), process.returncode, stopped


# ---- the environment ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Driver:
    gpus: tuple[str, ...]  # as `nvidia-smi -L` lists them
    version: str  # the driver's, or why it is unknown


def nvidia_driver() -> Driver:
    """The GPUs the driver lists and its version; no GPUs where nvidia-smi is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Driver((), "no nvidia-smi on PATH")
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
        queried = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Driver((), f"nvidia-smi failed: {type(error).__name__}")
    gpus = tuple(line.strip() for line in listed.stdout.splitlines() if line.startswith("GPU "))
    answer = (queried.stdout.strip().splitlines() or [""])[0].strip()
    if queried.returncode != 0 or not answer:
        said = (listed.stdout + listed.stderr).strip().splitlines() or ["no answer"]
        answer = f"unknown (nvidia-smi: {said[0]})"
    return Driver(gpus, answer)


def probe(path: Path) -> int:
    """The environment stage: what torch is and sees, to `path` (JSON) and stdout."""
    facts: dict = {}
    try:
        import torch
    except Exception as error:  # a missing or broken torch is this stage's failure, named
        facts["error"] = f"cannot import torch: {type(error).__name__}: {error}"
    else:
        facts.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if facts["cuda_available"]:
            facts["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["cudnn"] = torch.backends.cudnn.version()
        else:
            try:  # torch's own words for why (no driver, a driver older than the build, a CPU build)
                torch.cuda.init()
            except Exception as error:
                facts["cuda_error"] = " ".join(str(error).split())[:400] or type(error).__name__
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(facts, indent=2) + "\n")
    for key, value in facts.items():
        print(f"{key}: {value}")
    return 1 if "error" in facts else 0


def _describe(facts: dict, driver: Driver) -> str:
    torch_part = (f"torch {facts['torch']} (CUDA build {facts['cuda_build'] or 'none: a CPU build'})"
                  if "torch" in facts else facts.get("error", "torch unknown"))
    gpus = "; ".join(driver.gpus) if driver.gpus else "none listed"
    sees = ", ".join(facts.get("devices", [])) or "no CUDA device"
    return f"{torch_part}; driver {driver.version}; GPUs (nvidia-smi): {gpus}; torch sees: {sees}"


# ---- the training-speed stage ---------------------------------------------------------------------------------------

def _mnist_splits(device):
    """Full MNIST on the device, or a random stand-in of its size and a line saying which."""
    import torch

    from studies.data import datasets
    from studies.training.config import TrainConfig
    from studies.training.loop import Split, load_splits

    raw = datasets.default_data_root() / datasets.get_info("mnist").folder / "raw"
    if all((raw / name).exists() for split in ("train", "test") for name in datasets.split_files(split)):
        return load_splits(TrainConfig(device=str(device)), device), f"MNIST from {raw}"
    generator = torch.Generator().manual_seed(0)

    def split(size):
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images.to(device), torch.randint(0, 10, (size,), generator=generator).to(device))

    return (split(60_000), None, split(10_000)), f"a random stand-in of MNIST's size ({raw} is missing)"


def train_speed(model: str, out: Path) -> int:
    """One training-speed stage: each epoch's record appended to train-<model>.jsonl as it ends, the
    speeds to train-<model>.json."""
    import torch

    from studies.training.config import TrainConfig
    from studies.training.loop import train

    device = torch.device("cuda")
    splits, source = _mnist_splits(device)
    print(f"{model} on {source}: {len(splits[0]):,} images per epoch, batch 128, bf16, shift2, compile auto; "
          "epoch 1 includes the compilation, epoch 2 is timed alone", flush=True)
    epochs = out / f"train-{model}.jsonl"
    epochs.write_text("")

    def record(entry: dict, _model) -> None:
        with epochs.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        print(f"epoch {entry['epoch']} ended at {entry['seconds']:.1f} s: {json.dumps(entry)}", flush=True)

    config = TrainConfig(model=model, epochs=2, batch_size=128, bf16=True, augmentation="shift2", device="cuda",
                         progress=False)
    result = train(config, on_epoch=record, splits=splits)
    first, second = result.history
    epoch_s = second["seconds"] - first["seconds"]
    speeds = {"model": model, "data": source, "batch_size": 128, "dtype": "bf16",
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "epoch1_s": first["seconds"], "epoch2_s": epoch_s,
              "images_per_s": (second["images"] - first["images"]) / epoch_s,
              "test_accuracy": result.test_accuracy}
    (out / f"train-{model}.json").write_text(json.dumps(speeds, indent=2) + "\n")
    print(json.dumps(speeds), flush=True)
    return 0


# ---- the command line -----------------------------------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
    """Bad input is one line and exit code 2, as in every command line here (studies/arguments.py
    has the same for the other commands, but imports what this check must run without)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def check(out: Path, budget_s: float) -> int:
    run = Run(out, budget_s)
    driver = nvidia_driver()
    stages = plan(out)
    environment = run.stage(environment_stage(out))
    facts_path = out / "environment.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    described = _describe(facts, driver)
    run.facts.update(environment=described, driver=driver.version, gpus=list(driver.gpus), torch=facts)
    run.log(described)
    if environment.status == "passed" and facts.get("cuda_available"):
        reason = ""
    elif driver.gpus:  # a GPU the driver lists and torch was not seen to use: the machine is broken
        if environment.status != "passed":
            why = f"the environment stage {environment.status} ({environment.reason}; see logs/environment.log)"
        else:
            likely = (f"torch's CUDA {facts['cuda_build']} may be newer than driver {driver.version} supports"
                      if facts.get("cuda_build") else "this torch is a CPU build")
            why = f"{facts.get('cuda_error', 'torch.cuda.is_available() is False')}: {likely}"
        environment.status = "failed"
        environment.reason = f"nvidia-smi lists {len(driver.gpus)} GPU(s) but torch was not seen to use them: {why}"
        run.log("FAILED: " + environment.reason)
        reason = "torch cannot use the GPU nvidia-smi lists"
    elif environment.status != "passed":
        reason = "the environment stage did not pass (see logs/environment.log)"
    else:
        reason = "no CUDA device (nvidia-smi lists no GPU and torch sees none)"
    environment.headline = described
    run.write_summary()
    for stage in stages:
        if reason:
            run.skip(stage, reason)
        else:
            run.stage(stage)
    run.log(f"done in {run.elapsed():.0f} s: {run.verdict()}; summary in {out / 'summary.md'}")
    run.handle.close()
    return run.exit_code()


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help=f"results directory (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--budget-s", type=_seconds, default=BUDGET_S,
                        help=f"seconds the whole check may take (default {BUDGET_S:.0f})")
    # One stage, as the check runs it in a process of its own.
    parser.add_argument("--probe", metavar="JSON", help="(a stage) write what torch is and sees to JSON")
    parser.add_argument("--train-speed", metavar="MODEL", help="(a stage) time two training epochs of MODEL")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()  # the stages run in the repository's root
    if args.probe:
        return probe(Path(args.probe))
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        print(f"error: cannot write results to {out}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.train_speed:
        return train_speed(args.train_speed, out)
    return check(out, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
