"""Running the command lines inside the test process, or in a new one; the tiny study specs.

Error paths and small runs go through the same `main(argv)` as `python -m studies|bench`
(`run_cli`), without the seconds a new interpreter spends importing torch and torchvision. Each
module keeps at least one real subprocess run (`run_process`), so the entry points themselves stay
tested. The command lines are imported when a test runs one: they import optuna and the rest of the
study stack, which a GPU machine may lack where `pytest tests/test_cuda.py` must still run.

`pytest -m "not e2e"` (`make test-fast`) leaves out the end-to-end tests: subprocess training runs,
servers, whole studies trained in the test process.
"""
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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


def _run_process(program: str, *args, results=None, env: dict | None = None, cwd=None, timeout: float | None = None,
                 wait: bool = True, **popen):
    """`python -m <program> <args>` in a new interpreter, as a user starts it.

    results: sets CAPSBENCH_RESULTS; env: variables set on top of this process's (a value of None
    removes one); cwd: where it runs (default: here). wait=True: a CompletedProcess, stdout and stderr
    captured as text. With a timeout the command runs in a session of its own; on expiry its whole
    process group (the command line and the workers it started) is killed and the test fails, so a
    hang fails the test instead of blocking the suite. wait=False: the running Popen, in text mode.
    popen goes to subprocess.Popen (stdin=, start_new_session=, ...; stdout= and stderr= only with
    wait=False, since wait=True captures both).
    """
    variables = dict(os.environ)
    changes = {**({"CAPSBENCH_RESULTS": results} if results is not None else {}), **(env or {})}
    for name, value in changes.items():
        if value is None:
            variables.pop(name, None)
        else:
            variables[name] = str(value)
    argv = [str(arg) for arg in args]
    command = [sys.executable, "-m", program, *argv]
    if not wait:
        return subprocess.Popen(command, env=variables, cwd=cwd, text=True, **popen)
    popen.setdefault("start_new_session", timeout is not None)
    process = subprocess.Popen(command, env=variables, cwd=cwd, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, **popen)

    def kill():
        if popen["start_new_session"]:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()

    with process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"`{program} {' '.join(argv)}` still running after {timeout} s\n{stdout}\n{stderr}")
        except BaseException:  # Ctrl-C, say: no process left behind (as subprocess.run does)
            kill()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="session", autouse=True)
def speed_plan_cache(tmp_path_factory):
    """The CPU speed-plan cache (studies/training/speed_choice.py) of this test session, shared by its
    xdist workers and the command lines they start, so tests neither read nor write the user's."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    previous = os.environ.get("CAPSBENCH_CACHE")
    os.environ["CAPSBENCH_CACHE"] = str(root / "capsbench-cache")
    yield Path(os.environ["CAPSBENCH_CACHE"])
    if previous is None:
        os.environ.pop("CAPSBENCH_CACHE", None)
    else:
        os.environ["CAPSBENCH_CACHE"] = previous


@pytest.fixture(scope="session")
def run_process():
    """run_process("studies", *args, results=..., env={...}, cwd=..., timeout=..., wait=True, **popen):
    the command line in a new interpreter (see _run_process)."""
    return _run_process


def _toml_lines(table: dict) -> list[str]:
    return [f"{key} = {json.dumps(value)}" for key, value in table.items()]  # JSON's spelling is TOML's here


def _write_tiny_spec(directory: Path, filename: str | None = None, *, name: str = "tiny", dataset: str | None = None,
                     scientific: dict | None = None, arms: list[tuple[str, dict]] | None = None, seeds=(0,),
                     train_size: int = 64, test_size: int = 100, epochs: int = 1, batch_size: int = 16) -> Path:
    """A study spec small enough to train in seconds, written to directory/filename (default
    <name>.toml): arms as (model, scientific factors) pairs, by default one cnn_pool arm with
    `scientific` (default augmentation none and shift2); one `smoke` profile."""
    if arms is None:
        arms = [("cnn_pool", scientific if scientific is not None else {"augmentation": ["none", "shift2"]})]
    lines = _toml_lines({"name": name, **({"dataset": dataset} if dataset else {})})
    for model, factors in arms:
        lines += ["[[arms]]", *_toml_lines({"model": model}), "[arms.scientific]", *_toml_lines(factors)]
    lines += ["[profiles.smoke]", *_toml_lines({"seeds": list(seeds), "train_size": train_size, "test_size": test_size,
                                                 "epochs": epochs, "batch_size": batch_size})]
    path = Path(directory) / (filename or f"{name}.toml")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_spec():
    """tiny_spec(directory, filename=None, *, name="tiny", scientific=..., seeds=(0,), ...) -> the
    spec's path (see _write_tiny_spec)."""
    return _write_tiny_spec


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



@pytest.fixture
def count_calls(monkeypatch):
    """count_calls(module, "name") -> a list that gets the positional arguments of every call of
    module.name from now on (the real function still runs)."""

    def install(module, name: str) -> list:
        calls, real = [], getattr(module, name)

        def counted(*args, **kwargs):
            calls.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
        return calls

    return install
