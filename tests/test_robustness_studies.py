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
    frame = pd.read_csv(robustness / "affnist.csv")
    assert set(frame["model"]) == {"capsnet", "cnn_pool"}
    assert set(frame["robustness_set"]) == {"affNIST-style (generated)"}
    assert frame["reached_target"].all() and frame["affnist_accuracy"].notna().all()
    table = (robustness / "affnist-table.md").read_text()
    assert "affNIST-style (generated) acc. %" in table and "79" in table and "66" in table
    report = (robustness / "REPORT.md").read_text()
    assert "not the official affNIST" in report and '"rotation_deg": 20.0' in report


def test_rotation_study_writes_long_form_sweeps(robustness):
    sweep = pd.read_csv(robustness / "rotation-sweep.csv")
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
