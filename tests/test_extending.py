"""Adding a model and a study without editing the suite: a module outside the suite's packages
registers the model, a spec file outside the repository names it, and the smoke profile runs."""
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.data
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.e2e
def test_a_users_model_and_study_run_from_outside_the_repository(tmp_path, run_process):
    outside = tmp_path / "my_project"
    outside.mkdir()
    for name in ("my_mlp.py", "my_study.toml"):
        shutil.copy(EXAMPLES / name, outside / name)
    done = run_process("studies", "run", "--study", outside / "my_study.toml", "--profile", "smoke", "--no-progress",
                       results=tmp_path / "results", cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "results" / "smoke"
    trials = pd.read_csv(out / "my_study-trials.csv")
    assert sorted(set(trials["model"])) == ["cnn_pool", "my_mlp"] and len(trials) == 6
    assert set(trials.loc[trials["model"] == "my_mlp", "hidden"]) == {32, 128}
    effects = pd.read_csv(out / "my_study-effects.csv")
    assert "my_mlp: hidden 128 − 32" in set(effects["comparison"])
    assert "My MLP against the pooled CNN" in (out / "REPORT.md").read_text()


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path, run_cli):
    spec = tmp_path / "broken.toml"
    spec.write_text(
        'name = "broken"\nimports = ["no_such_module"]\n[[arms]]\nmodel = "cnn_pool"\n[profiles.smoke]\nseeds = [0]\n')
    done = run_cli("studies", "run", "--study", spec, "--profile", "smoke", env={"CAPSBENCH_RESULTS": tmp_path / "r"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot import 'no_such_module'" in lines[0], done.stderr
