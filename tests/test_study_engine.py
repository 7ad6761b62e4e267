"""The study engine end to end on real MNIST: smoke profile, resume, crash recovery."""
import signal
import subprocess
import time
from collections import Counter

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from studies.training.devices import cpu_model
from tests.storage_polling import wait_for_trials

pytestmark = pytest.mark.data


def completed_per_point(storage_url, name):
    study = optuna.load_study(study_name=name, storage=storage_url)
    return Counter(t.user_attrs["point"] for t in study.get_trials(states=(TrialState.COMPLETE,))), study


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, run_process):
    results = tmp_path_factory.mktemp("results")
    done = run_process("studies", "run", "--study", "ablation", "--profile", "smoke", "--no-progress", results=results)
    assert done.returncode == 0, done.stderr
    return results, done


def test_make_study_runs_the_engine_with_profile_and_study():
    dry = subprocess.run(["make", "-n", "study", "PROFILE=smoke", "STUDY=ablation", "DATASET=fashion_mnist"],
                         capture_output=True, text=True)
    assert "-m studies run --profile smoke --study ablation --dataset fashion_mnist" in dry.stdout


@pytest.mark.e2e
def test_smoke_study_writes_every_report_file(smoke):
    results, _ = smoke
    out = results / "smoke"
    for name in ["ablation.csv", "ablation-trials.csv", "ablation-table1.md", "ablation-table1.tex", "ablation-error.png",
                 "ablation-effects.csv", "ablation-effects.md", "ablation-effects.tex", "ablation-effects.png",
                 "REPORT.md"]:
        assert (out / name).stat().st_size > 0, name
    trials = pd.read_csv(out / "ablation-trials.csv")
    # smoke grid: capsnet routing {1,3} x recon {0, 0.0005} x shift2, cnn_pool x shift2; 2 seeds
    assert len(trials) == 10
    for column in ["model", "routing_iters", "recon_weight", "augmentation", "seed", "test_error",
                   "train_seconds", "params", "device", "torch_version", "train_images", "epochs", "dtype"]:
        assert column in trials, column
    assert set(trials["model"]) == {"capsnet", "cnn_pool"}
    # the summary: one row per configuration, with n, mean, sd and the 95% t interval over seeds
    summary = pd.read_csv(out / "ablation.csv")
    assert len(summary) == 5 and set(summary["n"]) == {2}
    for column in ["test_error_mean", "test_error_sd", "ci95_low", "ci95_high", "params", "paper_error"]:
        assert column in summary, column
    errors = trials.groupby(["model", "routing_iters", "recon_weight"], dropna=False)["test_error"].mean() * 100
    assert sorted(summary["test_error_mean"].round(6)) == sorted(errors.round(6))
    table = (out / "ablation-table1.md").read_text().strip().splitlines()
    assert len(table) == 2 + 5  # header, rule, 5 configurations
    # smoke models are near chance: the paper's numbers are not put beside them
    assert "0.25 ± 0.005" not in (out / "ablation-table1.md").read_text()
    assert "(not beside a model this far from trained)" in (out / "ablation-table1.md").read_text()
    assert "\\toprule" in (out / "ablation-table1.tex").read_text()
    effects = pd.read_csv(out / "ablation-effects.csv")
    for column in ["comparison", "within", "n", "mean_difference", "ci95_low", "ci95_high", "p_paired_t",
                   "p_sign_flip_exact", "primary", "p_holm", "resolved", "budget", "detectable_80pct_power",
                   "seeds_80pct_power_low", "seeds_80pct_power_high"]:
        assert column in effects, column
    comparisons = set(effects["comparison"])
    assert {"capsnet: routing_iters 3 − 1", "capsnet: recon_weight 0.0005 − 0.0",
            "capsnet (recon_weight=0.0005, routing_iters=3; 8.2M parameters) − cnn_pool (4.6M parameters)"} <= comparisons
    assert set(effects["n"]) == {2} and not effects["resolved"].any()  # nothing is resolved with 2 seeds
    # The three declared comparisons are primary, with Holm's p over them; every other row is exploratory.
    primary = effects[effects["primary"]]
    assert len(primary) == 3 and primary["p_holm"].notna().all() and effects[~effects["primary"]]["p_holm"].isna().all()
    assert (primary["p_holm"] >= primary["p_paired_t"] - 1e-12).all()
    assert set(effects["budget"]) == {"equal"}
    trials_frame = pd.read_csv(out / "ablation-trials.csv")
    assert trials_frame["images_seen"].nunique() == 1 and "val_accuracy" in trials_frame
    report = (out / "REPORT.md").read_text()
    assert "64 training images" in report and "seeds 0, 1" in report and "ablation-error.png" in report
    assert report.index("## Findings") < report.index("## Routing and reconstruction ablation")
    findings = report[report.index("## Findings"):report.index("## Routing and reconstruction ablation")]
    # Every primary comparison is a finding, in the spec's order, whatever its sign.
    assert findings.index("routing_iters 3 − 1") < findings.index("recon_weight 0.0005 − 0.0") < findings.index(
        "− cnn_pool") and findings.count("Holm-adjusted") == 3
    assert "`cnn_paper`: standard and paper profiles only" in report


@pytest.mark.e2e
def test_running_again_trains_nothing(smoke, run_process):
    results, _ = smoke
    url = f"sqlite:///{results / 'smoke' / 'studies.db'}"
    before, study = completed_per_point(url, "ablation.mnist.smoke")
    trials_before = len(study.get_trials())
    started = time.time()
    # Without --no-progress, but not on a terminal (captured, as in a log file): no bars, no redraws
    again = run_process("studies", "run", "--study", "ablation", "--profile", "smoke", results=results)
    assert again.returncode == 0, again.stderr
    assert "done " not in again.stderr  # no trial finished, i.e. none trained
    # (text mode reads a carriage return as a new line, so the bars' own marks are looked for)
    assert "%|" not in again.stderr and "trial/s" not in again.stderr and "\x1b" not in again.stderr
    after, study = completed_per_point(url, "ablation.mnist.smoke")
    assert after == before and len(study.get_trials()) == trials_before
    assert time.time() - started < 60
    # The CPU speed paths: chosen once per shape on this machine, stored with the study, recorded on
    # every CapsNet trial with their factors; the CNN has none to choose.
    plans = study.user_attrs["speed_plans"]
    assert plans and all(key.startswith(cpu_model()) for key in plans)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        if trial.user_attrs["values"]["model"] == "capsnet":
            recorded = trial.user_attrs["speed_plan"]
            assert recorded["key"] in plans and recorded["plan"] == plans[recorded["key"]]["plan"]
            assert "against the plain twin" in recorded["why"]
            assert trial.user_attrs["metrics"]["speed_plan"].startswith("routing ")
        else:
            assert "speed_plan" not in trial.user_attrs
            assert trial.user_attrs["metrics"]["speed_plan"] == "each path's own rule"


@pytest.fixture
def write_spec(tiny_spec):
    """tiny.toml: efficient_capsnet (the fastest registered model to train on a CPU), augmentation
    none and shift2, seeds 0 and 1 on MNIST."""
    return lambda directory, **sizes: tiny_spec(directory, dataset="mnist", seeds=(0, 1), **sizes,
                                                arms=[("efficient_capsnet", {"augmentation": ["none", "shift2"]})])


@pytest.mark.e2e
def test_killed_worker_is_detected_and_its_point_retrained(tmp_path, run_process, write_spec):
    spec = write_spec(tmp_path, train_size=512, epochs=2)
    results = tmp_path / "results"
    args = ["run", "--study", str(spec), "--profile", "smoke", "--no-report", "--heartbeat", "0.5", "--grace", "3"]
    worker = run_process("studies", *args, results=results, wait=False, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    url = f"sqlite:///{results / 'smoke' / 'studies.db'}"

    def one_done_one_running(trials):  # the moment to kill the worker
        states = Counter(t.state for t in trials)
        return states[TrialState.COMPLETE] >= 1 and states[TrialState.RUNNING] == 1

    wait_for_trials(worker, results / "smoke" / "studies.db", "tiny.mnist.smoke", one_done_one_running)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    trials = optuna.load_study(study_name="tiny.mnist.smoke", storage=url).get_trials()
    killed = [t for t in trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    rerun = run_process("studies", *args, results=results)
    assert rerun.returncode == 0, rerun.stderr
    counts, study = completed_per_point(url, "tiny.mnist.smoke")
    assert len(counts) == 4 and set(counts.values()) == {1}
    failed = study.get_trials()[killed[0].number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["failure"].startswith("stale")


@pytest.mark.e2e
def test_dataset_override_runs_fashion_mnist(tmp_path, run_process, write_spec):
    results = tmp_path / "results"
    done = run_process("studies", "run", "--study", write_spec(tmp_path), "--profile", "smoke", "--dataset",
                       "fashion_mnist", "--no-progress", results=results)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(results / "smoke" / "tiny-fashion_mnist-trials.csv")
    assert len(frame) == 4
    assert "fashion_mnist" in (results / "smoke" / "REPORT.md").read_text()


@pytest.mark.e2e
def test_running_one_more_study_keeps_the_others_in_the_report(smoke, tmp_path, run_process, write_spec):
    results, _ = smoke
    done = run_process("studies", "run", "--study", write_spec(tmp_path), "--profile", "smoke", "--no-progress",
                       results=results)
    assert done.returncode == 0, done.stderr
    report = (results / "smoke" / "REPORT.md").read_text()
    assert "ablation-error.png" in report  # the earlier study's section is still there
    assert "tiny" in report


def test_the_paper_stands_beside_a_trained_model_only():
    from studies.report.accuracy import MEANINGFUL_ERROR, display

    table = pd.DataFrame([{"model": "capsnet", "routing_iters": 3, "recon_weight": 0.0005, "augmentation": "shift2",
                           "n": 3, "test_error_mean": error, "test_error_sd": 0.1, "ci95_low": error - 0.2,
                           "ci95_high": error + 0.2, "params": 8215568, "train_seconds_mean": 50.0,
                           "val_error_mean": error - 0.3, "val_error_sd": 0.1, "images_seen": 20000,
                           "paper_error": "0.25 ± 0.005"} for error in (1.8, MEANINGFUL_ERROR + 1)])
    shown = display(table, ["routing_iters", "recon_weight", "augmentation"])["Paper error %"].tolist()
    assert shown == ["0.25 ± 0.005", "(not beside a model this far from trained)"]


@pytest.mark.e2e
def test_the_report_reads_the_stored_trials_only(smoke, run_cli, tmp_path):
    """No data, no device, no worker: the report of a stored study rebuilds the same tables with the
    data root pointing nowhere, and creates nothing there."""
    results, _ = smoke
    out = results / "smoke"
    tables = {name: (out / name).read_bytes() for name in ("ablation-trials.csv", "ablation-effects.csv")}
    missing = tmp_path / "no-data-here"
    done = run_cli("studies", "report", "--study", "ablation", "--profile", "smoke",
                   env={"CAPSBENCH_RESULTS": results, "CAPSBENCH_DATA": missing})
    assert done.returncode == 0, done.stderr
    assert not missing.exists()
    assert {name: (out / name).read_bytes() for name in tables} == tables
