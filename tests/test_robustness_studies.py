"""affNIST and rotation studies end to end (smoke profile) and their test-set choice."""
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from studies.data import affnist_style
from studies.engine import tasks
from studies.engine.tasks import affnist_set
from studies.spec.study import load_spec
from studies.training.config import TrainConfig

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def robustness(tmp_path_factory, run_process):
    results = tmp_path_factory.mktemp("results")
    done = run_process("studies", "run", "--study", "affnist", "--study", "rotation", "--profile", "smoke",
                       "--no-progress", results=results)
    assert done.returncode == 0, done.stderr
    return results / "smoke"


@pytest.mark.e2e
def test_affnist_study_writes_curves_levels_and_the_generated_sets_name(robustness):
    frame = pd.read_csv(robustness / "affnist-trials.csv")
    assert set(frame["model"]) == {"capsnet", "cnn_pool"}
    assert set(frame["robustness_set"]) == {"affNIST-style (generated)"}
    assert frame["images_seen"].nunique() == 1  # every arm trains the same budget
    curves = pd.read_csv(robustness / "affnist-curves.csv")
    for column in ["seed", "model", "step", "images", "val_accuracy", "test_accuracy", "affnist_accuracy"]:
        assert column in curves, column
    # smoke: the untrained model, then 2 epochs of 2 steps, a checkpoint at the end of each
    assert sorted(curves["step"].unique()) == [0, 2, 4]
    assert curves[curves["step"] > 0]["affnist_accuracy"].notna().all()
    levels = pd.read_csv(robustness / "affnist-levels.csv")
    assert set(levels["level"]) == {0.1, 0.2} and len(levels) == 2 * 2
    assert (robustness / "affnist-curves.png").stat().st_size > 0
    end = (robustness / "affnist-end.md").read_text()
    # the CNN is sized to CapsNet's parameter count at 40x40; both counts are in the table
    assert "13,475,648" in end and "13,471,833" in end
    report = (robustness / "REPORT.md").read_text()
    assert "not the official affNIST" in report and '"rotation_deg": 20.0' in report
    assert '"generator_version"' in report and "output_sha256" in report
    assert "Secondary view" in report
    effects = pd.read_csv(robustness / "affnist-effects.csv")
    assert {"primary", "p_holm", "at_level"} <= set(effects.columns)
    # The declared comparison, at both levels: a row where both models' curves reached the level, else
    # a finding that says it was not answered; either way in REPORT.md's findings.
    findings = report[report.index("## Findings"):report.index("## Routing") if "## Routing" in report else None]
    answered = set(effects[effects["primary"].astype(bool)]["at_level"])
    for level in (10, 20):
        assert (level / 100 in answered) or f"capsnet − cnn_pool at {level}% validation accuracy, affnist_accuracy" \
            in findings



@pytest.mark.e2e
def test_the_affnist_report_needs_neither_data_nor_a_device(robustness, run_cli, tmp_path):
    """The report rebuilds the affNIST study (whose trials depend on a generated set) from storage
    alone: the data root points nowhere, and nothing is generated or created there."""
    tables = {name: (robustness / name).read_bytes() for name in ("affnist-trials.csv", "affnist-levels.csv")}
    missing = tmp_path / "no-data-here"
    done = run_cli("studies", "report", "--study", "affnist", "--profile", "smoke",
                   env={"CAPSBENCH_RESULTS": robustness.parent, "CAPSBENCH_DATA": missing})
    assert done.returncode == 0, done.stderr
    assert not missing.exists()
    assert {name: (robustness / name).read_bytes() for name in tables} == tables

@pytest.mark.e2e
def test_rotation_study_writes_curves_and_long_form_sweeps(robustness):
    curves = pd.read_csv(robustness / "rotation-curves.csv")
    for column in ["seed", "model", "augmentation", "step", "val_accuracy", "test_accuracy", "rotation_auc",
                   "translation_auc"]:
        assert column in curves, column
    trained = curves[curves["step"] > 0]
    assert trained["test_accuracy"].notna().all()  # the sweep's unchanged point, at every checkpoint
    sweep = pd.read_csv(robustness / "rotation-sweep.csv")
    assert list(sweep.columns) == ["model", "seed", "augmentation", "step", "transform", "amount", "accuracy"]
    # smoke: 2 trials x 2 checkpoints after a step x (3 angles + 3 shifts), and the untrained model
    # where a level was crossed right after it
    swept = sweep[sweep["step"] > 0]
    assert len(swept) == 2 * 2 * 6
    measured_at_start = curves[(curves["step"] == 0) & curves["rotation_auc"].notna()]
    assert len(sweep[sweep["step"] == 0]) == 6 * len(measured_at_start)
    assert sorted(sweep[sweep["transform"] == "rotation"]["amount"].unique()) == [-90, 0, 90]
    # The unchanged point of both sweeps is one evaluation: the clean test accuracy.
    zero = sweep[sweep["amount"] == 0].pivot_table(index=["model", "step"], columns="transform", values="accuracy")
    assert (zero["rotation"] == zero["translation"]).all()
    for name in ["rotation-levels-table.md", "rotation-curves.png", "rotation-rotation.png",
                 "rotation-translation.png", "rotation-effects.csv", "rotation-end.md"]:
        assert (robustness / name).stat().st_size > 0


def test_official_affnist_files_are_used_and_named_when_present(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1600, 30), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    scipy.io.savemat(tmp_path / "test.mat", {"affNISTdata": {"image": images, "label_int": labels}})
    extracted = affnist_set_from(tmp_path / "extracted", {"affNIST/test.mat": tmp_path / "test.mat"})
    # As downloaded, in a folder named in lower case: the same set, named by the file read.
    downloaded = affnist_set_from(tmp_path / "downloaded", {"affnist/test.mat.zip": tmp_path / "test.mat"})
    for chosen in (extracted, downloaded):
        assert chosen.name == "affNIST" and len(chosen.split) == 30  # fewer than affnist_size: all of them
        assert chosen.split.images.shape == (30, 1, 40, 40)
        assert chosen.identity["source"] == "official affNIST test files"
    assert extracted.identity == downloaded.identity
    assert (extracted.files, downloaded.files) == ("affNIST/test.mat", "affnist/test.mat.zip")
    said = capsys.readouterr().out
    assert f"testing on the official affNIST test set, affnist/test.mat.zip in {tmp_path / 'downloaded'}" in said


def affnist_set_from(root, files):
    """affnist_set on a data root holding `files` (name -> .mat file; a .zip name holds the file)."""
    import zipfile

    for name, source in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".zip"):
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.write(source, source.name)
        else:
            target.write_bytes(source.read_bytes())
    spec = load_spec("affnist")
    tasks.ROBUSTNESS_SETS.clear()
    return affnist_set(spec, spec.profile("smoke"), TrainConfig(data_root=str(root), device="cpu"))


def test_the_generated_set_is_announced_before_training(tmp_path, capsys, monkeypatch):
    def small_generated_set(ranges, copies, seed, device, root):
        images, labels = torch.zeros(20, 40, 40, dtype=torch.uint8), torch.arange(20) % 10
        return SimpleNamespace(images=images, labels=labels, copies=copies, seed=seed, canvas=40, source_sha256="x")

    monkeypatch.setattr(affnist_style, "mnist_affnist_style", small_generated_set)
    spec = load_spec("affnist")
    tasks.ROBUSTNESS_SETS.clear()
    chosen = affnist_set(spec, spec.profile("smoke"), TrainConfig(data_root=str(tmp_path), device="cpu"))
    tasks.ROBUSTNESS_SETS.clear()
    assert chosen.name == affnist_style.DESCRIPTION and chosen.files == ""
    said = capsys.readouterr().out
    assert f"no official affNIST test files in {tmp_path / 'affNIST'}" in said
    assert "testing on the generated affNIST-style set instead" in said


def test_the_robustness_sets_identity_is_its_recipe_not_its_pixels(monkeypatch):
    """Regenerated on another CPU or a GPU, a generated set's uint8 pixels may round differently;
    its identity (what trials are matched by) must not change, while its output digest does."""
    spec = load_spec("affnist")
    profile = spec.profile("smoke")
    config = TrainConfig(device="cpu")
    tasks.ROBUSTNESS_SETS.clear()
    here = affnist_set(spec, profile, config)
    make = affnist_style.mnist_affnist_style

    def one_rounding_step_away(*args, **kwargs):
        made = make(*args, **kwargs)
        images = made.images.clone()
        images[images < 255] += (images[images < 255] > 0).to(torch.uint8)  # every grey pixel one step up
        return dataclasses.replace(made, images=images)

    monkeypatch.setattr(affnist_style, "mnist_affnist_style", one_rounding_step_away)
    tasks.ROBUSTNESS_SETS.clear()
    elsewhere = affnist_set(spec, profile, config)
    tasks.ROBUSTNESS_SETS.clear()
    assert not torch.equal(here.split.images, elsewhere.split.images)
    assert here.output_sha256 != elsewhere.output_sha256
    assert here.identity == elsewhere.identity
    assert "output_sha256" not in json.dumps(here.identity) and "source_sha256" in here.identity


@pytest.mark.e2e  # a whole affNIST trial, trained in this process
def test_checkpoint_choices_in_an_affnist_trial_see_validation_readings_only(monkeypatch):
    """A spy through a real affNIST trial: every evaluation of a split other than validation is
    shifted by 10 (an accuracy no validation reading can have); the schedule and the bracketing
    of levels receive values, and all of them are validation readings."""
    from studies.training import curves

    spec = load_spec("affnist")
    profile = spec.profile("smoke")
    config = spec.train_config(spec.points("smoke")[0], "smoke", device="cpu", progress=False)
    real = curves.evaluate
    seen, validation = [], []
    load = tasks.load_splits

    def spy_load(*args, **kwargs):
        splits = load(*args, **kwargs)
        validation_split = splits[1]

        def evaluate(model, split, *args, **kwargs):
            accuracy = real(model, split, *args, **kwargs)
            if split is validation_split:
                validation.append(accuracy)
                return accuracy
            return accuracy + 10.0

        monkeypatch.setattr(curves, "evaluate", evaluate)
        monkeypatch.setattr(tasks, "evaluate", evaluate)
        return splits

    original_interval, original_crossing = curves.Schedule.next_interval, curves.first_crossing
    monkeypatch.setattr(curves.Schedule, "next_interval", lambda self, v: seen.append(v) or original_interval(self, v))
    monkeypatch.setattr(curves, "first_crossing", lambda r, level: seen.extend(r) or original_crossing(r, level))
    monkeypatch.setattr(tasks, "load_splits", spy_load)
    outcome = tasks.affnist_task(spec, profile, config, tasks.TrainHooks())
    assert seen and set(seen) <= set(validation)
    assert all(row["affnist_accuracy"] >= 10.0 for row in outcome.rows if row["step"] > 0)  # shifted, and measured


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
