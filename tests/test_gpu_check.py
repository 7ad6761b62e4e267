"""`make gpu-check` (bench/gpu_check.py) on a machine without CUDA, where every CUDA stage must be
named as skipped, and with a driver that lists a GPU torch cannot use, where it must fail; its
stages survive one another's failures, hangs and time limits; the bench leaves the rows it measured."""
import csv
import json
import os
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.options import BenchOptions
from bench.benchmark import RowAppender, run_benchmark, table_stem, write_tables

ROOT = Path(__file__).resolve().parents[1]
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="about a machine where torch has no CUDA")

STAND_IN_NVIDIA_SMI = """#!/bin/sh
# nvidia-smi as a driver that sees one GPU answers
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-1111-2222-3333-444444444444)" ;;
  --query-gpu=driver_version) echo "535.54.03" ;;
  *) exit 6 ;;
esac
"""


def _path_without_nvidia_smi() -> str:
    return os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                           if folder and not (Path(folder) / "nvidia-smi").exists())


@pytest.fixture
def check(run_process):
    """`python -m bench.gpu_check --out OUT` with the given PATH and no PYTHONPATH, from the repository."""
    return lambda out, path: run_process("bench.gpu_check", "--out", out, env={"PATH": path, "PYTHONPATH": None},
                                         cwd=ROOT, timeout=120)


@pytest.mark.e2e
@needs_no_cuda
def test_without_cuda_the_check_exits_0_and_names_every_cuda_stage_as_skipped(tmp_path, check):
    done = check(tmp_path / "gpu", _path_without_nvidia_smi())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    stages = {stage["name"]: stage for stage in summary["stages"]}
    cuda_stages = [stage.name for stage in gpu_check.plan(tmp_path / "gpu")]
    assert {"train-capsnet", "train-cnn_pool", "train-cnn_paper", "cuda-tests", "bench-bf16"} <= set(cuda_stages)
    assert stages["environment"]["status"] == "passed"
    for name in cuda_stages:
        assert stages[name]["status"] == "skipped" and "no CUDA device" in stages[name]["reason"], stages[name]
    table = (tmp_path / "gpu" / "summary.md").read_text()
    assert all(f"| {name} | skipped: no CUDA device" in table for name in cuda_stages)
    assert torch.__version__ in (tmp_path / "gpu" / "gpu-check.log").read_text()
    assert (tmp_path / "gpu" / "logs" / "environment.log").is_file()


@pytest.mark.e2e
@needs_no_cuda
def test_a_gpu_the_driver_lists_but_torch_cannot_use_fails_the_check_naming_both(tmp_path, check):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(STAND_IN_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    done = check(tmp_path / "gpu", f"{bin_dir}{os.pathsep}{_path_without_nvidia_smi()}")
    assert done.returncode != 0
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    environment = summary["stages"][0]
    assert environment["name"] == "environment" and environment["status"] == "failed"
    assert "nvidia-smi lists 1 GPU" in environment["reason"]
    assert all(stage["status"] == "skipped" for stage in summary["stages"][1:])
    log = (tmp_path / "gpu" / "gpu-check.log").read_text()
    for named in (torch.__version__, "NVIDIA H200", "driver 535.54.03", f"CUDA build {torch.version.cuda or 'none'}"):
        assert named in log


def test_the_plan_fits_the_8_minute_budget_with_training_speed_first(tmp_path):
    stages = [gpu_check.environment_stage(tmp_path)] + gpu_check.plan(tmp_path)
    planned = sum(stage.limit_s for stage in stages) + 2 * gpu_check.NVIDIA_SMI_TIMEOUT_S
    assert planned <= gpu_check.BUDGET_S == 480
    assert stages[1].name == "train-capsnet"
    assert len({stage.name for stage in stages}) == len(stages)


def _stage(name: str, code: str, limit_s: float) -> gpu_check.Stage:
    return gpu_check.Stage(name, f"stand-in {name}", ("-c", code), limit_s)


def test_a_failing_a_hanging_and_a_passing_stage_each_get_their_own_status_and_full_log(tmp_path):
    run = gpu_check.Run(tmp_path, budget_s=60)
    many_lines = "import sys\nfor i in range(40): print('line', i)\nimport a_package_that_is_not_there"
    failed = run.stage(_stage("broken", many_lines, 30))
    stopped = run.stage(_stage("hangs", "import time\nprint('started', flush=True)\ntime.sleep(120)", 2))
    passed = run.stage(_stage("fine", "print('done')", 30))
    assert (failed.status, stopped.status, passed.status) == ("failed", "stopped", "passed")
    assert "ModuleNotFoundError" in failed.reason
    broken_log = (tmp_path / "logs" / "broken.log").read_text()
    assert "line 0" in broken_log and "line 39" in broken_log and "a_package_that_is_not_there" in broken_log
    assert "started" in (tmp_path / "logs" / "hangs.log").read_text() and stopped.seconds < 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [stage["status"] for stage in summary["stages"]] == ["failed", "stopped", "passed"]
    assert summary["exit_code"] == 1
    spent = gpu_check.Run(tmp_path / "spent", budget_s=gpu_check.MIN_STAGE_S / 2)
    skipped = spent.stage(_stage("late", "print('never')", 30))
    assert skipped.status == "skipped" and "budget" in skipped.reason


def test_headlines_come_from_what_a_stage_left_even_when_it_was_stopped(tmp_path):
    train = gpu_check._train_headline("capsnet")
    assert train(tmp_path, "") == "no epoch ended"
    (tmp_path / "train-capsnet.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 41.5, "images": 60000}) + "\n")
    assert train(tmp_path, "RuntimeWarning: torch.compile failed (...)") == \
        "1 epoch(s) ended, the first after 41.5 s; compilation failed, trained eagerly"
    speeds = {"images_per_s": 29_999.0, "epoch1_s": 40.1, "epoch2_s": 2.0, "test_accuracy": 0.98}
    (tmp_path / "train-capsnet.json").write_text(json.dumps(speeds))
    assert train(tmp_path, "").endswith("target 30,000: NOT met")
    tests = "tests/test_cuda.py::test_x PASSED\n===== 1 failed, 14 passed in 81.20s =====\n"
    assert gpu_check._tests_headline(tmp_path, tests) == "1 failed, 14 passed in 81.20s"


def _rows_on_disk(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_bench_rows_reach_the_disk_as_they_are_measured_and_the_table_only_at_the_end(tmp_path):
    options = BenchOptions(profile="smoke", models=("cnn_pool",), batch_sizes=(1, 2), device="cpu", references=False)
    (tmp_path / "throughput-cpu-fp32.rows.csv").write_text("section\nan earlier run's row\n")
    appender = RowAppender(tmp_path)
    on_disk = []

    def on_row(row):
        appender(row)
        on_disk.append(_rows_on_disk(tmp_path / f"{table_stem([row])}.rows.csv"))
        # A part-run never leaves a table that reads as finished.
        assert not (tmp_path / f"{table_stem([row])}.csv").exists()

    rows = run_benchmark(options, on_row=on_row)
    assert [len(table) for table in on_disk] == [1, 2, 3, 4]  # a run stopped after row k leaves k rows
    assert [(r["batch"], r["mode"]) for r in on_disk[-1]] == [("1", "train"), ("1", "infer"), ("2", "train"),
                                                              ("2", "infer")]
    write_tables(rows, tmp_path)
    # the finished table has the same rows; then the rows as they came go
    assert _rows_on_disk(tmp_path / f"{table_stem(rows)}.csv") == on_disk[-1]
    appender.finished()
    assert not (tmp_path / f"{table_stem(rows)}.rows.csv").exists()
