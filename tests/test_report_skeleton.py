"""The one skeleton every study section is assembled by (studies/report/section.py): the shared
parts in their order around what a kind supplies, the files line naming every file in that order,
and a study without completed trials written as such without asking the kind for anything."""
from datetime import datetime, timedelta

import pandas as pd

from studies.report import effects as fx
from studies.report.section import Comparisons, SectionParts, study_section
from studies.report.trials import StudyTrials
from studies.run_options import RunOptions
from studies.spec.study import parse_spec

SPEC = parse_spec({
    "name": "t", "kind": "accuracy",
    "arms": [{"model": "capsnet", "scientific": {"routing_iters": [1, 3]}}],
    "primary": [{"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]}],
    "profiles": {"smoke": {"seeds": [0, 1], "train_size": 8}, "standard": {"seeds": [0, 1, 2]}},
}, "t.toml")


def stored(tmp_path, rows: int, failed: pd.DataFrame | None = None) -> StudyTrials:
    start = datetime(2000, 1, 1)
    frame = pd.DataFrame([{
        "trial": i, "point": f"p{i}", "model": "capsnet", "routing_iters": 1 + 2 * (i % 2), "seed": i // 2,
        "test_error": 0.1, "train_images": 8, "val_images": 4, "test_images": 10, "epochs": 1, "batch_size": 4,
        "images_seen": 8, "split_seed": 0, "learning_rate": 0.001, "device": "cpu", "dtype": "float32",
        "wall_seconds": 1.0, "started": start, "completed": start + timedelta(seconds=1)} for i in range(rows)])
    options = RunOptions(profile="smoke", results_root=str(tmp_path))
    return StudyTrials(SPEC, options, [], frame, ["routing_iters"], 0, 0,
                       pd.DataFrame() if failed is None else failed)


def marked_parts(trials, out, stem):
    """A kind whose every part is a marker (its files are named, not written)."""
    effects, unanswered = fx.mark_primary([], trials.spec)
    return SectionParts(Comparisons(effects, unanswered, "### THE COMPARISONS", "paired things"),
                        ["BODY", ""], [out / f"{stem}-body.csv"], recipe=["- RECIPE"], protocol=["- PROTOCOL"],
                        closing=["CLOSING", ""], closing_files=[out / f"{stem}-closing.png"], findings_data="DATA")


def test_the_shared_parts_surround_what_the_kind_supplies_in_one_order(tmp_path):
    failed = pd.DataFrame([{"point": "p9", "reason": "diverged"}])
    section = study_section(stored(tmp_path, 4, failed), tmp_path, marked_parts)
    text = section.markdown
    order = ["- budget (profile `smoke`)", "- RECIPE", "- PROTOCOL", "BODY", "### THE COMPARISONS", "CLOSING",
             "Failed points", "Files: "]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert text.splitlines()[-1].startswith("Files: ") and text.endswith("\n")
    names = [path.name for path in section.files]
    assert names[0] == "t-body.csv" and names[-1] == "t-closing.png"
    assert {"t-effects.csv", "t-effects.md", "t-effects.tex"} <= set(names[1:-1])
    assert text.splitlines()[-1] == "Files: " + ", ".join(f"[{n}]({n})" for n in names)
    assert section.title == f"{SPEC.title} — {SPEC.dataset}"
    assert section.findings_heading.startswith(f"{SPEC.title} (DATA; 8 training images")
    # The declared comparison has no row here: it is a finding that says so.
    assert len(section.findings) == 1 and "not answered" in section.findings[0]


def test_a_study_without_completed_trials_asks_the_kind_for_nothing(tmp_path):
    def build(*_):
        raise AssertionError("the kind was asked for its parts")

    section = study_section(stored(tmp_path, 0), tmp_path, build)
    assert section.markdown == "_No completed trials yet._\n" and section.files == []
