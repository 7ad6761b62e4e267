"""Faults of disks and files, injected for real: a tmpfs that fills during a smoke study, a results
directory on a read-only bind mount, a journal whose append runs out of space, a report written to a
full disk, damaged pixels in a published MNIST file. Each ends in one line and a non-zero exit,
loses no stored trial and leaves no partial file, and the next run on a healthy disk goes on. And a
storage archived on a read-only disk is still read by the report.

Mounting needs root (CAP_SYS_ADMIN); where it is not allowed the mount tests skip, saying why. Every
mount is undone in the fixture's teardown, also when a test fails."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.data.datasets import RAW_FILES, prepare

pytestmark = pytest.mark.data

STUDY = "tiny.mnist.smoke"
# cnn_pool's checkpoint (weights and Adam's two moments) is about 55 MB; the study's SQLite file
# about 120 kB. A disk with a few MB to spare takes the storage's writes but not a checkpoint.
SPARE_FOR_STORAGE = 4 << 20
ROOMY = "300m"


class Mounts:
    """tmpfs and read-only bind mounts, undone in reverse order by `undo`."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def _mount(self, *args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(done.stderr.strip() or f"mount {' '.join(args)} failed")

    def tmpfs(self, where: Path, size: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        self.points.append(where)
        return where

    def resize(self, where: Path, size: str | int) -> None:
        self._mount("-o", f"remount,size={size}", str(where))

    def read_only_view(self, source: Path, where: Path) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        self._mount("--bind", str(source), str(where))
        self.points.append(where)
        self._mount("-o", "remount,bind,ro", str(where))
        return where

    def undo(self) -> None:
        for where in reversed(self.points):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it anyway
        self.points.clear()


@pytest.fixture
def mounts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a read-only bind mount needs root")
    made = Mounts()
    try:
        made.tmpfs(tmp_path / "probe-mount", "1m")
    except OSError as error:
        made.undo()
        pytest.skip(f"mounting is not permitted here: {error}")
    try:
        yield made
    finally:
        made.undo()


@pytest.fixture
def write_spec(tiny_spec):
    """tiny.toml: cnn_pool over the given augmentations, seed 0, batches of 32."""
    return lambda directory, augmentations: tiny_spec(directory, scientific={"augmentation": augmentations},
                                                      batch_size=32)


def one_line_error(done, *fragments) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def partial_files(root: Path) -> list[Path]:
    """What a write cut short would leave: temporary files and staging directories."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".report-", ".staging-"))]


def trials(database: Path) -> dict[int, tuple]:
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{database}")
    return {t.number: (t.state, t.user_attrs.get("point"), t.user_attrs.get("failure"), t.value)
            for t in study.get_trials()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def studies(run_cli):
    def run(command, *args, results: Path):
        quiet = ["--no-progress"] if command == "run" else []
        return run_cli("studies", command, *args, "--profile", "smoke", *quiet, env={"CAPSBENCH_RESULTS": results})

    return run


@pytest.mark.e2e
def test_a_disk_that_fills_during_a_study_ends_in_one_line_and_the_next_run_completes(mounts, tmp_path, studies,
                                                                                     write_spec):
    disk = mounts.tmpfs(tmp_path / "disk", ROOMY)
    results = disk / "results"
    database = results / "smoke" / "studies.db"
    first = studies("run", "--study", write_spec(tmp_path, ["none"]), "--no-report", results=results)
    assert first.returncode == 0, first.stderr
    stored = trials(database)
    assert [state for state, *_ in stored.values()] == [TrialState.COMPLETE]

    # The spec grows by a point; the disk now has room for the storage's writes, not a checkpoint.
    used = shutil.disk_usage(disk).used
    mounts.resize(disk, used + SPARE_FOR_STORAGE)
    full = studies("run", "--study", write_spec(tmp_path, ["none", "shift2"]), "--no-report", results=results)
    line = one_line_error(full, "cannot write", str(results / "smoke" / "checkpoints"), "No space left on device",
                          "recorded as interrupted")
    assert "Traceback" not in full.stderr and "StorageInternalError" not in line
    assert partial_files(disk) == []
    after = trials(database)
    assert {n: after[n] for n in stored} == stored  # nothing stored is lost or changed
    (new,) = [after[n] for n in after if n not in stored]
    assert new[0] == TrialState.FAIL and new[2].startswith("interrupted: cannot write")

    # A report written to the full disk: one line, no partial file, nothing left half-written.
    shutil.copy(disk / "results" / "smoke" / "studies.db", tmp_path / "before.db")
    filler = disk / "filler"
    with filler.open("wb") as stream:  # all but 16 kB: the storage's check fits, not the figures
        stream.write(b"\0" * max(shutil.disk_usage(disk).free - (16 << 10), 0))
    report = studies("report", "--study", write_spec(tmp_path, ["none", "shift2"]), results=results)
    one_line_error(report, f"cannot write the report in {results / 'smoke'}: No space left on device")
    assert partial_files(disk) == [] and not (results / "smoke" / "REPORT.md").exists()
    assert digest(database) == digest(tmp_path / "before.db")
    filler.unlink()

    # A healthy disk: the next run completes the study, training only the interrupted point.
    mounts.resize(disk, ROOMY)
    again = studies("run", "--study", write_spec(tmp_path, ["none", "shift2"]), results=results)
    assert again.returncode == 0, again.stderr
    final = trials(database)
    assert {n: final[n] for n in stored} == stored
    done = [t for t in final.values() if t[0] == TrialState.COMPLETE]
    assert sorted(point for _, point, _, _ in done) == ["cnn_pool|augmentation=none|seed=0",
                                                         "cnn_pool|augmentation=shift2|seed=0"]
    assert partial_files(disk) == [] and (results / "smoke" / "REPORT.md").exists()


def test_read_only_results_are_refused_before_training_whatever_the_storage(mounts, tmp_path, studies, write_spec):
    source = tmp_path / "results"
    (source / "smoke").mkdir(parents=True)
    view = mounts.read_only_view(source, tmp_path / "read-only")
    storage = tmp_path / "elsewhere" / "studies.db"
    storage.parent.mkdir()
    done = studies("run", "--study", write_spec(tmp_path, ["none"]), "--storage", f"sqlite:///{storage}",
                   results=view)
    one_line_error(done, f"results directory {view / 'smoke'} is not writable: Read-only file system")
    assert not storage.exists()  # refused before the storage was opened, let alone a trial trained
    assert list(source.rglob("*")) == [source / "smoke"]


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_report_reads_a_storage_on_a_read_only_disk(mounts, tmp_path, studies, write_spec, run_cli, kind):
    """An archived storage is read, not probed: the report writes its tables elsewhere, the same as
    those of the run that stored it."""
    spec = write_spec(tmp_path, ["none"])
    results = tmp_path / "results"
    done = studies("run", "--study", spec, results=results)
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "archive"
    archive.mkdir()
    if kind == "sqlite":
        shutil.copy(results / "smoke" / "studies.db", archive / "studies.db")
    else:
        moved = run_cli("studies", "migrate", "--profile", "smoke", "--results", results,
                        "--to", f"journal:{archive / 'studies.journal'}")
        assert moved.returncode == 0, moved.stderr
    view = mounts.read_only_view(archive, tmp_path / "read-only")
    url = f"sqlite:///{view / 'studies.db'}" if kind == "sqlite" else f"journal:{view / 'studies.journal'}"
    before = sorted(archive.iterdir())

    tables = tmp_path / "tables"
    report = studies("report", "--study", spec, "--storage", url, results=tables)
    assert report.returncode == 0, report.stderr
    assert digest(tables / "smoke" / "tiny-trials.csv") == digest(results / "smoke" / "tiny-trials.csv")
    assert sorted(archive.iterdir()) == before


def test_a_journal_append_cut_short_by_a_full_disk_leaves_the_journal_whole(mounts, tmp_path):
    from studies.store.storage import open_storage, parse_url

    disk = mounts.tmpfs(tmp_path / "disk", "256k")
    choice = parse_url(f"journal:{disk / 'studies.journal'}")
    study = optuna.create_study(study_name="j", storage=open_storage(choice))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"kept": True}))
    before = (disk / "studies.journal").read_bytes()
    with pytest.raises(OSError) as failed:
        study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs={"big": "x" * (1 << 20)}))
    assert failed.value.errno == 28
    assert (disk / "studies.journal").read_bytes() == before  # cut back to the last whole line
    study.add_trial(optuna.trial.create_trial(value=3.0))
    reread = optuna.load_study(study_name="j", storage=open_storage(choice))
    assert [t.value for t in reread.get_trials()] == [1.0, 3.0]


def test_damaged_pixels_in_a_published_file_are_refused_and_left_as_they_are(tmp_path, studies, run_cli, write_spec):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        shutil.copy(prepare("mnist") / name, raw / name)
    damaged = raw / "train-images-idx3-ubyte"
    original = damaged.read_bytes()
    with damaged.open("r+b") as stream:  # eight pixel bytes, same size, header intact
        stream.seek(16 + 28 * 28 * 100 + 300)
        stream.write(bytes([255, 0] * 4))
    before = damaged.read_bytes()
    assert len(before) == len(original) and before != original

    data = run_cli("studies", "data", "--dataset", "mnist", "--data-root", tmp_path / "data")
    one_line_error(data, str(damaged), "checksum mismatch")
    results = tmp_path / "results"
    run = studies("run", "--study", write_spec(tmp_path, ["none"]), "--data-root", tmp_path / "data",
                  results=results)
    one_line_error(run, str(damaged), "checksum mismatch")
    assert damaged.read_bytes() == before  # never replaced or repaired
    stamp = raw / ".capsbench-validated.json"
    assert not stamp.exists() or hashlib.sha256(before).hexdigest() not in stamp.read_text()  # never vouched for
    assert not (results / "smoke" / "studies.db").exists()

    damaged.write_bytes(original)  # the healthy file back: the data is ready again
    again = run_cli("studies", "data", "--dataset", "mnist", "--data-root", tmp_path / "data")
    assert again.returncode == 0, again.stderr
    assert "sha256 of every file as published" in again.stdout
