"""Failures stay visible and harmless: divergence, bad input, checkpoints, determinism."""
import hashlib
import shutil

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from studies.data.datasets import prepare
from studies.training.config import TrainConfig
from studies.training.loop import train

# Each test trains: a study in a new process (the `stored` study, which the bad inputs must leave
# alone, included) or a model in this one.
pytestmark = [pytest.mark.data, pytest.mark.e2e]

@pytest.fixture(scope="session")
def run(run_process):
    """`python -m studies run ... --profile smoke` in a new process."""

    def run_there(*args, results, data_root=None):
        extra = ["--data-root", data_root] if data_root else []
        return run_process("studies", "run", *args, "--profile", "smoke", "--no-progress", *extra, results=results)

    return run_there


@pytest.fixture
def rejected(run_cli):
    """`run` inside this process, for the bad inputs that stop before any training."""

    def run_here(*args, results, data_root=None):
        extra = ["--data-root", data_root] if data_root else []
        return run_cli("studies", "run", *args, "--profile", "smoke", "--no-progress", *extra,
                       env={"CAPSBENCH_RESULTS": results})

    return run_here


def one_line_error(done, fragment):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, run, tiny_spec):
    spec = tiny_spec(tmp_path, scientific={"lr": [0.001, 1000000.0]})
    results = tmp_path / "results"
    done = run("--study", str(spec), results=results)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="tiny.mnist.smoke", storage=f"sqlite:///{results / 'smoke' / 'studies.db'}")
    states = {t.user_attrs["values"]["lr"]: t for t in study.get_trials()}
    assert states[0.001].state == TrialState.COMPLETE
    failed = states[1000000.0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["failure"] == "diverged: loss became nan at epoch 1, step 1"
    report = (results / "smoke" / "REPORT.md").read_text()
    assert "Failed points" in report and "diverged: loss became nan at epoch 1, step 1" in report
    again = run("--study", str(spec), results=results)  # a diverged point is final, not retried
    assert again.returncode == 0 and len(study.get_trials()) == 2


@pytest.fixture(scope="module")
def stored(tmp_path_factory, run, tiny_spec):
    """A results directory holding one finished study (tiny.toml), to check that bad input leaves it alone."""
    tmp_path = tmp_path_factory.mktemp("stored")
    results = tmp_path / "results"
    done = run("--study", tiny_spec(tmp_path), results=results)
    assert done.returncode == 0, done.stderr
    return tmp_path, results, results / "smoke" / "studies.db"


def test_spec_with_unknown_key_is_rejected_before_anything_is_stored(stored, tmp_path, rejected, tiny_spec):
    _, results, database = stored
    before = digest(database)
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_spec(tmp_path).read_text() + "\nbogus = 1\n")
    one_line_error(rejected("--study", str(bad), results=results), "unknown key 'bogus'")
    wrong_type = tiny_spec(tmp_path, "type.toml", scientific={"epochs": ["two"]})
    one_line_error(rejected("--study", str(wrong_type), results=results), "epochs: input should be a valid integer, got 'two'")
    impossible = tiny_spec(tmp_path, "range.toml", scientific={"batch_size": [0]})
    one_line_error(rejected("--study", str(impossible), results=results), "batch_size: input should be greater than or equal to 1, got 0")
    assert digest(database) == before


def test_unreachable_storage_is_one_line(stored, rejected):
    spec_dir, results, _ = stored
    done = rejected("--study", str(spec_dir / "tiny.toml"), "--storage", "sqlite:////nonexistent/dir/x.db", results=results)
    one_line_error(done, "cannot open storage sqlite:////nonexistent/dir/x.db")


def test_unwritable_results_directory_is_one_line(stored, tmp_path, rejected):
    spec_dir, _, _ = stored
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the results directory should be")
    one_line_error(rejected("--study", str(spec_dir / "tiny.toml"), results=blocker), "is not writable")
    assert blocker.read_text() == "a file where the results directory should be"


def test_paths_of_the_wrong_kind_are_one_line_each_and_change_nothing(stored, tmp_path, rejected):
    spec_dir, results, database = stored
    before = digest(database)
    spec = str(spec_dir / "tiny.toml")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    one_line_error(rejected("--study", spec, "--storage", f"journal:{folder}", results=results),
                   f"cannot open storage journal:{folder}: {folder} is a directory")
    one_line_error(rejected("--study", spec, "--storage", "journal:/proc/x", results=results),
                   "cannot open storage journal:/proc/x")
    looks_like_a_spec = tmp_path / "folder.toml"
    looks_like_a_spec.mkdir()
    one_line_error(rejected("--study", str(looks_like_a_spec), results=results), f"{looks_like_a_spec} is a directory")
    one_line_error(rejected("--study", str(folder), results=results), f"{folder} is a directory")
    one_line_error(rejected("--study", "no-such-study", results=results),
                   "unknown study 'no-such-study': neither a built-in study (ablation")
    assert digest(database) == before


def test_corrupt_dataset_is_one_line_and_changes_nothing(stored, tmp_path, rejected):
    spec_dir, results, database = stored
    before = digest(database)
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(prepare("mnist"), raw)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    done = rejected("--study", str(spec_dir / "tiny.toml"), results=results, data_root=tmp_path / "data")
    one_line_error(done, "train-images-idx3-ubyte")
    assert digest(database) == before and len(images.read_bytes()) == 1000


def test_affnist_file_with_missing_field_is_one_line_and_changes_nothing(stored, tmp_path, rejected):
    import numpy as np
    import scipy.io

    _, results, database = stored
    before = digest(database)
    data = tmp_path / "data"
    shutil.copytree(prepare("mnist"), data / "MNIST" / "raw")
    (data / "affNIST").mkdir()
    scipy.io.savemat(data / "affNIST" / "test.mat", {"affNISTdata": {"image": np.zeros((1600, 3), np.uint8)}})
    done = rejected("--study", "affnist", results=results, data_root=data)
    one_line_error(done, "label_int")
    assert digest(database) == before


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path):
    config = TrainConfig(model="cnn_pool", train_size=48, test_size=50, epochs=2, batch_size=16, progress=False)
    straight = train(config)
    checkpoint = tmp_path / "trial.pt"

    def crash_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train(config, on_epoch=crash_in_epoch_2, checkpoint=checkpoint)
    assert checkpoint.exists()  # holds epoch 1
    resumed = train(config, checkpoint=checkpoint)
    assert resumed.test_accuracy == straight.test_accuracy
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_the_same_spec_and_seed_give_identical_metrics(stored, tmp_path, run):
    spec_dir, results, _ = stored
    again = tmp_path / "again"
    done = run("--study", str(spec_dir / "tiny.toml"), results=again)
    assert done.returncode == 0, done.stderr
    columns = ["augmentation", "seed", "test_accuracy", "test_error", "params"]
    first = pd.read_csv(results / "smoke" / "tiny-trials.csv")[columns].sort_values("augmentation").reset_index(drop=True)
    second = pd.read_csv(again / "smoke" / "tiny-trials.csv")[columns].sort_values("augmentation").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)
