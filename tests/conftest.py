"""Running the command lines inside the test process.

Error paths and small runs go through the same `main(argv)` as `python -m studies|bench`,
without the seconds a new interpreter spends importing torch and torchvision. Each module
keeps at least one real subprocess run, so the entry points themselves stay tested. The command
lines are imported when a test runs one: they import optuna and the rest of the study stack, which
a GPU machine may lack where `pytest tests/test_cuda.py` must still run.
"""
import importlib
import os
import subprocess

import pytest
import torch

PROGRAMS = {"studies": "studies.cli", "bench": "bench.__main__"}

# `make test` runs the suite in two processes (pytest-xdist), one per core: each trains with one
# thread, and so do the command lines it starts, rather than four threads fighting over two cores.
# (The benchmark sets its own thread count, and a test about thread counts sets them itself.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["CAPSBENCH_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """run_cli("studies", *args, env={...}) -> CompletedProcess, like subprocess.run."""

    def run(program: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [str(arg) for arg in args]
        with monkeypatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, str(value))
            capsys.readouterr()
            try:
                code = importlib.import_module(PROGRAMS[program]).main(argv)
            except SystemExit as stopped:  # argparse's own errors
                code = stopped.code
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess([program, *argv], code, out, err)

    return run


@pytest.fixture(scope="session")
def kernel():
    """The C++ CPU kernels (models/cpu/csrc). A real component of the CPU training step: where they
    cannot be built, tests that need them skip locally but fail in CI (CI set)."""
    from models.cpu import kernels as cpu_kernels

    built = cpu_kernels.module()
    if built is None:
        message = f"the C++ CPU kernels could not be built: {cpu_kernels.error()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return built
