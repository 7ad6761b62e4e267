"""The MultiMNIST study end to end (smoke profile) and how a profile without it says so."""
import pandas as pd
import pytest

pytestmark = pytest.mark.data


@pytest.mark.e2e
def test_the_smoke_study_writes_its_table_effects_and_figure(tmp_path, run_process):
    done = run_process("studies", "run", "--study", "multimnist", "--profile", "smoke", "--no-progress",
                       results=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "smoke"
    trials = pd.read_csv(out / "multimnist-trials.csv")
    assert set(trials["model"]) == {"capsnet_multi", "cnn_multi"} and len(trials) == 3
    assert {"test_error", "digit_error", "mean_overlap", "train_pairs", "test_pairs"} <= set(trials.columns)
    assert ((trials["digit_error"] <= trials["test_error"]) | trials["test_error"].isna()).all()
    table = (out / "multimnist-table1.md").read_text()
    assert "Pair error %" in table and "Digit error %" in table and "24,535,306" in table and "11,361,808" in table
    for name in ("multimnist-effects.csv", "multimnist-effects.md", "multimnist-reconstructions.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "REPORT.md").read_text()
    assert "MultiMNIST (generated)" in report and "(the paper quotes about 80%)" in report


def test_a_profile_without_the_study_names_it_with_the_papers_column(tmp_path, run_cli):
    done = run_cli("studies", "report", "--profile", "quick", "--study", "ablation",
                   env={"CAPSBENCH_RESULTS": tmp_path})
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "quick" / "REPORT.md").read_text()
    section = report.split("## MultiMNIST")[1]
    assert "Not run in the `quick` profile: standard and paper profiles only" in section
    assert "8.1" in section and "7.5" in section and "5.2" in section and "24,535,306" in section
