"""Bad input ends with one clear line on stderr and exit code 2, before any training."""
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from studies.data.datasets import prepare
from studies.data.idx import write_idx


@pytest.fixture
def studies(run_cli):
    return lambda *args, env=None: run_cli("studies", *args, env=env)


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "resnet"], ["--model: invalid choice: 'resnet'", "'capsnet', 'capsnet_multi', 'cnn_multi', 'cnn_paper', 'cnn_pool'"]),
        (["--routing-iters", "0"], ["routing_iters: input should be greater than or equal to 1, got 0"]),
        (["--recon-weight", "-1"], ["recon_weight: input should be greater than or equal to 0, got -1"]),
        (["--aug", "flip"], ["unknown augmentation"]),
        (["--dataset", "cifar"], ["dataset: input should be 'mnist' or 'fashion_mnist', got 'cifar'"]),
        (["--epochs", "0"], ["epochs: input should be greater than or equal to 1, got 0"]),
    ],
)
def test_bad_arguments(args, fragments, studies):
    assert_one_line_error(studies("train", *args, "--train-size", "8"), *fragments)


def test_the_entry_point_reports_bad_input_in_one_line(run_process):
    done = run_process("studies", "train", "--model", "resnet")
    assert_one_line_error(done, "invalid choice: 'resnet'")


@pytest.mark.parametrize("program", ["studies", "bench"])
def test_ctrl_c_during_start_up_is_one_line(program, tmp_path, run_process):
    """Ctrl-C while torch and the rest are still being imported: one line and exit code 130, not the
    traceback of whichever module it landed in."""
    args = (["data", "--data-root", str(tmp_path)] if program == "studies"
            else ["--profile", "smoke", "--out", str(tmp_path)])
    started = run_process(program, *args, wait=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # While torch is being imported (its library mapped, the import not done): the entry point's
    # guard is in place by then, and start-up is not over.
    maps = Path(f"/proc/{started.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and started.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    started.send_signal(signal.SIGINT)
    _, stderr = started.communicate(timeout=60)
    assert started.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted before anything started"]


def test_missing_data_names_the_sources_tried(tmp_path, studies):
    done = studies("train", "--data-root", tmp_path, env={"CAPSBENCH_DATA_SOURCES": "present"})
    assert_one_line_error(done, "present", str(tmp_path / "MNIST" / "raw"))


def test_wrong_dataset_in_place_is_an_error(tmp_path, studies):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(10, np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(10, np.uint8))
    done = studies("train", "--data-root", tmp_path, env={"CAPSBENCH_DATA_SOURCES": "present"})
    assert_one_line_error(done, "train-images-idx3-ubyte", "expected (60000, 28, 28)")


@pytest.mark.data
def test_truncated_data_is_an_error_and_is_left_alone(tmp_path, studies):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(prepare("mnist"), raw)
    truncated = raw / "t10k-labels-idx1-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-3])
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    done = studies("train", "--data-root", tmp_path, env={"CAPSBENCH_DATA_SOURCES": "present"})
    assert_one_line_error(done, "t10k-labels-idx1-ubyte")
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


def test_a_command_that_ended_leaves_a_late_ctrl_c_nothing_to_say():
    from studies import interrupt_line

    # The start-up guard put back after the command would claim "interrupted before anything started".
    assert interrupt_line.after_command(interrupt_line._leave_at_start_up) is signal.SIG_IGN
    assert interrupt_line.after_command(signal.default_int_handler) is signal.default_int_handler


def test_make_dashboard_opens_the_profiles_storage():
    dry = subprocess.run(["make", "-n", "dashboard", "PROFILE=smoke", "STORAGE=journal:/tmp/x.journal"],
                         capture_output=True, text=True)
    assert "-m studies dashboard --profile smoke --storage journal:/tmp/x.journal --port 8080" in dry.stdout
