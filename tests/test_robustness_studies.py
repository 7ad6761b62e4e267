"""affNIST and rotation studies end to end (smoke profile) and their test-set choice."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.io

from studies.engine.tasks import affnist_set
from studies.spec.study import load_spec
from studies.training.config import TrainConfig

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def robustness(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    env = dict(os.environ, CAPSBENCH_RESULTS=str(results))
    done = subprocess.run([sys.executable, "-m", "studies", "run", "--study", "affnist", "--study", "rotation",
                           "--profile", "smoke", "--no-progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return results / "smoke"


def test_affnist_study_reports_the_generated_set_by_its_name(robustness):
    frame = pd.read_csv(robustness / "affnist-trials.csv")
    assert set(frame["model"]) == {"capsnet", "cnn_pool"}
    assert set(frame["robustness_set"]) == {"affNIST-style (generated)"}
    assert frame["reached_target"].all() and frame["affnist_accuracy"].notna().all()
    assert (frame["matched_val_accuracy"] >= frame["target_accuracy"]).all()
    table = (robustness / "affnist-table.md").read_text()
    assert "affNIST-style (generated) acc. %" in table and "79" in table and "66" in table
    # the CNN is sized to CapsNet's parameter count at 40x40; both counts are in the table
    assert "13,475,648" in table and "13,471,833" in table
    report = (robustness / "REPORT.md").read_text()
    assert "not the official affNIST" in report and '"rotation_deg": 20.0' in report
    assert "matched on the validation split" in report
    effects = pd.read_csv(robustness / "affnist-effects.csv")
    assert set(effects["comparison"]) == {"capsnet − cnn_pool"}


def test_rotation_study_writes_long_form_sweeps(robustness):
    sweep = pd.read_csv(robustness / "rotation-sweep.csv")
    assert (robustness / "rotation-effects.csv").exists()
    assert list(sweep.columns) == ["model", "train_augmentation", "seed", "transform", "amount", "accuracy"]
    # smoke: 2 trials x (3 angles + 3 shifts)
    assert len(sweep) == 12
    assert sorted(sweep[sweep["transform"] == "rotation"]["amount"].unique()) == [-90, 0, 90]
    for name in ["rotation-rotation.md", "rotation-rotation.tex", "rotation-rotation.png",
                 "rotation-translation.md", "rotation-translation.png"]:
        assert (robustness / name).stat().st_size > 0
    summary = (robustness / "rotation-rotation.md").read_text()
    assert "acc. % at ±90" in summary and "AUC" in summary


def test_official_affnist_files_are_used_and_named_when_present(tmp_path):
    folder = tmp_path / "affNIST"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1600, 30), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    scipy.io.savemat(folder / "test.mat", {"affNISTdata": {"image": images, "label_int": labels}})
    spec = load_spec("affnist")
    config = TrainConfig(data_root=str(tmp_path), device="cpu")
    chosen = affnist_set(spec, spec.profile("smoke"), config)
    assert chosen.name == "affNIST" and len(chosen.split) == 30
    assert chosen.split.images.shape == (30, 1, 40, 40)


def test_the_test_split_is_read_only_after_the_match(monkeypatch, tmp_path):
    """A spy on every evaluation of an affNIST trial: the validation checks come first, and the
    test split and the robustness set are evaluated only once one of them reached the target."""
    from studies.engine import tasks
    from studies.training import train as training

    spec = load_spec("affnist")
    profile = spec.profile("smoke")
    config = spec.train_config(spec.points("smoke")[0], "smoke", device="cpu", progress=False)
    seen = {}
    load = training.load_splits

    def spy_load(*args, **kwargs):
        splits = load(*args, **kwargs)
        seen.update(val=splits[1], test=splits[2])
        return splits

    calls = []
    evaluate = training.evaluate

    def spy_evaluate(model, split, *args, **kwargs):
        accuracy = evaluate(model, split, *args, **kwargs)
        name = next((n for n, s in seen.items() if s is split), "robustness")
        calls.append((name, accuracy))
        return accuracy

    monkeypatch.setattr(tasks, "load_splits", spy_load)
    monkeypatch.setattr(tasks, "evaluate", spy_evaluate)
    monkeypatch.setattr(training, "evaluate", spy_evaluate)
    outcome = tasks.affnist_task(spec, profile, config, tasks.TrainHooks())
    names = [name for name, _ in calls]
    assert outcome.metrics["reached_target"] and "test" in names and "robustness" in names
    first_other = names.index("test")
    assert set(names[:first_other]) == {"val"} and set(names[first_other:]) == {"test", "robustness"}
    validated = [accuracy for name, accuracy in calls[:first_other]]
    # The match is one of the readings: the first at the target, or the one before it ("nearest").
    assert outcome.metrics["matched_val_accuracy"] in validated
    assert max(validated) >= outcome.metrics["target_accuracy"]
    assert outcome.metrics["val_evaluations"] == first_other


def test_a_study_on_a_dataset_it_does_not_support_is_one_line(tmp_path, run_cli):
    results = tmp_path / "results"
    done = run_cli("studies", "run", "--study", "affnist", "--dataset", "fashion_mnist", "--profile", "smoke",
                   env={"CAPSBENCH_RESULTS": results})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "runs on mnist only, not 'fashion_mnist'" in lines[0], done.stderr
    assert not results.exists()  # nothing stored


def test_every_study_on_a_dataset_runs_those_that_support_it_and_names_the_rest(tmp_path, run_cli):
    done = run_cli("studies", "report", "--dataset", "fashion_mnist", "--profile", "smoke",
                   env={"CAPSBENCH_RESULTS": tmp_path / "results"})
    assert done.returncode == 0, done.stderr
    assert "skipped: affnist (runs on mnist only)" in done.stderr
    report = (tmp_path / "results" / "smoke" / "REPORT.md").read_text()
    assert "— fashion_mnist" in report and "affNIST" not in report
