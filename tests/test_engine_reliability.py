"""The study engine under real use: specs that grow, interrupts, crashes, out of memory, retries,
trials failed by another worker, clock skew, the choice of storage. The tasks here are stand-ins
that return at once, so the tests exercise the engine's bookkeeping on real Optuna storages."""
import errno
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from studies.engine import runner as runner_module
from studies.store.records import FAILURE_ATTR, IDENTITIES_ATTR, IDENTITY_ATTR, POINT_ATTR, point_states
from studies.engine.liveness import LEASE_ATTR, Liveness
from studies.engine.runner import Interrupted, StudyRunner
from studies.run_options import RunOptions
from studies.store.storage import StorageError, choose_storage, migrate, open_storage, parse_url
from studies.engine.tasks import TaskOutcome
from studies.write_faults import WriteFailed
from studies.spec.study import parse_spec
from tests.storage_polling import wait_for_trials

pytestmark = pytest.mark.data  # the runner's preflight checks the MNIST files


def spec_data(seeds=(0, 1), augmentations=("none", "shift2"), train_size=32):
    return {
        "name": "tiny",
        "arms": [{"model": "cnn_pool", "scientific": {"augmentation": list(augmentations)}}],
        "profiles": {"smoke": {"seeds": list(seeds), "train_size": train_size, "test_size": 50, "batch_size": 16}},
    }


class FakeTask:
    """Stands in for training: records the points it ran; `plan[key]` may raise instead."""

    def __init__(self, plan=None):
        self.calls, self.plan = [], dict(plan or {})

    def __call__(self, spec, profile, config, hooks):
        key = f"cnn_pool|augmentation={config.augmentation}|seed={config.seed}"
        self.calls.append(key)
        action = self.plan.get(key)
        if isinstance(action, list):
            action = action.pop(0) if action else None
        if callable(action):
            action()
        elif action is not None:
            raise action
        return TaskOutcome(metrics={"test_error": 0.1 + 0.01 * config.seed, "test_accuracy": 0.9, "params": 1})


@pytest.fixture
def engine(tmp_path, monkeypatch):
    task = FakeTask()
    monkeypatch.setitem(runner_module.TASKS, "accuracy", task)

    def make(data=None, **options):
        spec = parse_spec(data or spec_data(), str(tmp_path / "tiny.toml"))
        options = RunOptions(profile="smoke", results_root=str(tmp_path / "results"), progress=False,
                             **options)
        return StudyRunner(spec, options, announce=False)

    make.task = task
    return make


def completed(runner):
    return {t.user_attrs[POINT_ATTR]: t for t in runner.trials() if t.state == TrialState.COMPLETE}


def test_a_spec_that_grows_trains_only_what_is_new(engine):
    first = engine()
    assert first.run() == {"done": 4}
    before = {key: trial.number for key, trial in completed(first).items()}
    grown = engine(spec_data(seeds=(0, 1, 2), augmentations=("none", "shift2", "rotate30")))
    engine.task.calls.clear()
    assert grown.run() == {"done": 9}
    assert len(engine.task.calls) == 5  # the 9 points less the 4 already done
    after = completed(grown)
    assert {key: after[key].number for key in before} == before  # nothing lost, nothing retrained


def test_a_changed_budget_supersedes_old_trials_without_mixing(engine):
    engine().run()
    changed = engine(spec_data(train_size=48))
    engine.task.calls.clear()
    changed.run()
    assert len(engine.task.calls) == 4  # every point retrained at the new budget
    trials = [t for t in changed.trials() if t.state == TrialState.COMPLETE]
    assert len(trials) == 8
    for key in {t.user_attrs[POINT_ATTR] for t in trials}:  # each point: the old budget's trial and the new
        assert len({t.user_attrs[IDENTITY_ATTR] for t in trials if t.user_attrs[POINT_ATTR] == key}) == 2
    from studies.report.trials import load_trials

    loaded = load_trials(changed.spec, changed.options)
    assert len(loaded.frame) == 4 and loaded.superseded == 4



def test_the_report_tells_current_trials_from_the_stored_identities_alone(engine, tmp_path):
    """The report never prepares data: it takes the identities the last run stored, as long as the
    spec still declares what it declared then; a spec edited since has no current trial yet, and a
    study stored before identities were kept falls back on each point's newest trial."""
    from studies.report.trials import load_trials

    runner = engine()
    runner.run()
    assert len(load_trials(runner.spec, runner.options).frame) == 4
    edited = parse_spec(spec_data(train_size=48), str(tmp_path / "tiny.toml"))  # not run: nothing current
    loaded = load_trials(edited, runner.options)
    assert loaded.frame.empty and loaded.superseded == 4
    runner.stored.set_attr(IDENTITIES_ATTR, None)  # as an older version stored it
    assert len(load_trials(runner.spec, runner.options).frame) == 4

@pytest.mark.parametrize("interrupt, said", [(KeyboardInterrupt(), "interrupted: Ctrl-C"),
                                             (Interrupted(), "interrupted: SIGTERM")])
def test_an_interrupt_marks_the_trial_and_uses_no_attempt(engine, interrupt, said):
    key = "cnn_pool|augmentation=none|seed=0"
    engine.task.plan[key] = [interrupt] * 4
    runner = engine()
    for _ in range(4):  # more interrupts than MAX_ATTEMPTS
        with pytest.raises(KeyboardInterrupt):
            runner.run()
    interrupted = [t for t in runner.trials() if t.user_attrs.get(POINT_ATTR) == key]
    assert len(interrupted) == 4 and all(t.state == TrialState.FAIL for t in interrupted)
    assert {t.user_attrs[FAILURE_ATTR] for t in interrupted} == {said}
    assert runner.states()[key] == "retry"
    assert runner.run() == {"done": 4}


def full_disk(path="/results/smoke/checkpoints/x.pt"):
    return WriteFailed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def test_a_full_disk_interrupts_the_trial_in_one_line_and_uses_no_attempt(engine):
    key = "cnn_pool|augmentation=none|seed=0"
    engine.task.plan[key] = [full_disk()] * 4
    runner = engine()
    for _ in range(4):  # more full disks than MAX_ATTEMPTS
        with pytest.raises(WriteFailed) as stopped:
            runner.run()
        assert str(stopped.value).startswith("cannot write /results/smoke/checkpoints/x.pt: No space left on device")
        assert "recorded as interrupted (no attempt used)" in str(stopped.value) and "\n" not in str(stopped.value)
    failed = [t for t in runner.trials() if t.user_attrs.get(POINT_ATTR) == key]
    assert len(failed) == 4 and all(t.state == TrialState.FAIL for t in failed)
    assert all(t.user_attrs[FAILURE_ATTR].startswith("interrupted: cannot write") for t in failed)
    assert runner.states()[key] == "retry"
    assert runner.run() == {"done": 4}


def test_a_storage_on_the_full_disk_leaves_the_trial_to_the_next_run(engine, monkeypatch):
    """The storage cannot record the interruption: the run still ends in one line, and the next run
    finds the trial's worker gone and retrains the point."""
    key = "cnn_pool|augmentation=none|seed=0"
    runner = engine()
    disk = {"full": False}
    record = runner.stored.storage.set_trial_user_attr

    def set_attr(*args):
        if disk["full"]:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as error:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
        return record(*args)

    def fill_the_disk():
        disk["full"] = True
        raise full_disk()

    monkeypatch.setattr(runner.stored.storage, "set_trial_user_attr", set_attr)
    engine.task.plan[key] = [fill_the_disk]
    with pytest.raises(WriteFailed) as stopped:
        runner.run()
    assert "the storage could not record the interruption either" in str(stopped.value)
    (left,) = [t for t in runner.trials() if t.user_attrs.get(POINT_ATTR) == key]
    assert left.state == TrialState.RUNNING
    # This process stands in for the worker; as a separate run's would be, it is gone now.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record(runner.stored._trial_id(left.number), LEASE_ATTR, {**left.user_attrs[LEASE_ATTR], "pid": int(gone.stdout)})
    disk["full"] = False
    assert engine().run() == {"done": 4}


def test_a_full_disk_under_the_storage_is_one_line_naming_it(engine, monkeypatch):
    runner = engine()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner.stored.storage, "set_trial_state_values", full)
    with pytest.raises(WriteFailed) as stopped:
        runner.run()
    assert str(stopped.value).startswith(f"cannot write {runner.choice.path}: No space left on device")


def test_out_of_memory_is_a_failure_with_its_reason_and_the_study_goes_on(engine):
    key = "cnn_pool|augmentation=none|seed=0"
    engine.task.plan[key] = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    runner = engine()
    counts = runner.run()
    assert counts == {"done": 3, "failed": 1}
    failures = [t.user_attrs[FAILURE_ATTR] for t in runner.trials() if t.state == TrialState.FAIL]
    assert len(failures) == 3 and all(f.startswith("out of memory: OutOfMemoryError") for f in failures)


def test_retry_failed_gives_a_failed_point_another_round(engine, tmp_path):
    key = "cnn_pool|augmentation=none|seed=0"
    from studies.training.loop import Diverged

    engine.task.plan[key] = [Diverged(1, 3, float("nan"))]
    assert engine().run() == {"done": 3, "failed": 1}
    assert engine().run() == {"done": 3, "failed": 1}  # final: not retried on its own
    engine.task.calls.clear()
    assert engine(retry_failed=True).run() == {"done": 4}
    assert engine.task.calls == [key]


def test_make_passes_retry_failed():
    dry = subprocess.run(["make", "-n", "study", "RETRY_FAILED=1"], capture_output=True, text=True)
    assert "--retry-failed" in dry.stdout


def test_a_trial_failed_elsewhere_keeps_its_result_when_the_point_has_no_other(engine, capsys):
    key = "cnn_pool|augmentation=none|seed=0"
    runner = engine()

    def failed_by_another_worker():
        trial = next(t for t in runner.trials() if t.user_attrs.get(POINT_ATTR) == key)
        runner.stored.storage.set_trial_state_values(runner.stored._trial_id(trial.number), TrialState.FAIL)

    engine.task.plan[key] = failed_by_another_worker
    assert runner.run() == {"done": 4}
    kept = completed(runner)[key]
    assert "recovered_from_trial" in kept.user_attrs and kept.user_attrs["metrics"]["test_error"] == 0.1
    assert f"kept {key}" in capsys.readouterr().out


def test_a_trial_failed_elsewhere_is_discarded_when_the_point_was_completed(engine, capsys):
    key = "cnn_pool|augmentation=none|seed=0"
    runner = engine()

    def failed_and_completed_by_another_worker():
        trial = next(t for t in runner.trials() if t.user_attrs.get(POINT_ATTR) == key)
        runner.stored.storage.set_trial_state_values(runner.stored._trial_id(trial.number), TrialState.FAIL)
        runner.stored.study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=0.5,
            user_attrs={POINT_ATTR: key, IDENTITY_ATTR: runner.identities[key], "values": {}, "metrics": {}}))

    engine.task.plan[key] = failed_and_completed_by_another_worker
    assert runner.run() == {"done": 4}
    assert completed(runner)[key].value == 0.5  # the other worker's, not a second one
    assert f"discarded {key}" in capsys.readouterr().out


def test_a_skewed_clock_does_not_fail_a_live_trial(engine, monkeypatch):
    runner = engine()
    runner.run()
    # A RUNNING trial leased by a live process on this host (a sleeping child stands in for its worker).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runner.stored.study.enqueue_trial({}, user_attrs={POINT_ATTR: "x", IDENTITY_ATTR: "y"})
        waiting = next(t for t in runner.trials() if t.state == TrialState.WAITING)
        trial_id = runner.stored._trial_id(waiting.number)
        runner.stored.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        lease = {**runner.liveness._here, "pid": sleeper.pid}
        from studies.engine.liveness import _start_time

        lease["started"] = _start_time(sleeper.pid)
        runner.stored.storage.set_trial_user_attr(trial_id, LEASE_ATTR, lease)
        skewed = Liveness(runner.choice, heartbeat_s=0.1, grace_s=0.1)
        monkeypatch.setattr(time, "time", lambda: 1e12)  # this worker's clock is far ahead
        assert skewed.fail_dead(runner.stored) == []
        sleeper.kill()
        sleeper.wait()
        assert skewed.fail_dead(runner.stored) == [waiting.number]
        reason = runner.stored.storage.get_trial(trial_id).user_attrs[FAILURE_ATTR]
        assert reason.startswith("stale: worker process") and "is gone" in reason
    finally:
        sleeper.kill()


def test_storage_is_never_switched_silently(engine, tmp_path):
    engine().run()
    directory = tmp_path / "results" / "smoke"
    with pytest.raises(StorageError, match="studies migrate"):
        choose_storage(None, directory, workers=2)
    names = migrate(parse_url(f"sqlite:///{directory / 'studies.db'}"), parse_url(f"journal:{directory / 'studies.journal'}"))
    assert names == ["tiny.mnist.smoke"] and (directory / "studies.db.migrated").exists()
    journal = choose_storage(None, directory, workers=2)
    assert journal.kind == "journal" and journal.reason == "found"
    engine.task.calls.clear()
    again = engine(workers=2)
    assert again.run() == {"done": 4} and engine.task.calls == []  # the migrated trials count
    (directory / "studies.db").write_bytes((directory / "studies.db.migrated").read_bytes())
    with pytest.raises(StorageError, match="both .* exist"):
        choose_storage(None, directory, workers=1)


def _open_new_storage(url):
    open_storage(url)


def test_workers_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Each creates the schema; the ones that lose that race open the database the winner made."""
    context = multiprocessing.get_context("fork")  # a copy of this process: no second import of torch
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        workers = [context.Process(target=_open_new_storage, args=(url,)) for _ in range(6)]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=60)
            assert [worker.exitcode for worker in workers] == [0] * 6
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join()


def test_a_damaged_file_is_named_and_left_alone_and_nothing_is_fetched(tmp_path, run_cli):
    from studies.data.datasets import prepare

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in prepare("mnist").iterdir():
        if path.name.endswith("ubyte"):
            (raw / path.name).write_bytes(path.read_bytes())
    damaged, missing = raw / "t10k-labels-idx1-ubyte", raw / "train-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    before = damaged.read_bytes()
    missing.unlink()
    done = run_cli("studies", "data", "--dataset", "mnist", "--data-root", tmp_path / "data")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "t10k-labels-idx1-ubyte" in lines[0], done.stderr
    assert damaged.read_bytes() == before and not missing.exists()


# --- real processes ---------------------------------------------------------------------------

@pytest.fixture
def studies_process(run_process):
    """`python -m studies ...` started in a new process, its stdout and stderr piped."""
    return lambda *args, results: run_process("studies", *args, results=results, wait=False,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.e2e
@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "interrupted: SIGTERM"), (signal.SIGINT, "interrupted: Ctrl-C")])
def test_a_signal_stops_the_run_and_the_trial_uses_no_attempt(tmp_path, signum, said, studies_process, tiny_spec):
    # one point that trains long enough to be interrupted
    spec = tiny_spec(tmp_path, name="slow", scientific={"augmentation": ["none"]}, train_size=4000, test_size=50,
                     epochs=3)
    results = tmp_path / "results"
    worker = studies_process("run", "--study", spec, "--profile", "smoke", "--no-progress", "--no-report",
                             results=results)
    url = f"sqlite:///{results / 'smoke' / 'studies.db'}"
    wait_for_trials(worker, results / "smoke" / "studies.db", "slow.mnist.smoke",  # until the trial is training
                    lambda trials: any(t.state == TrialState.RUNNING and "config" in t.user_attrs for t in trials))
    worker.send_signal(signum)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 130, stderr
    assert "interrupted: run the same command again" in stderr
    (trial,) = optuna.load_study(study_name="slow.mnist.smoke", storage=url).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs[FAILURE_ATTR] == said
    identities = {trial.user_attrs[POINT_ATTR]: trial.user_attrs[IDENTITY_ATTR]}
    assert point_states([trial], identities) == {trial.user_attrs[POINT_ATTR]: "retry"}


@pytest.mark.e2e
def test_the_same_seed_gives_the_same_numbers_with_one_or_two_workers(tmp_path, monkeypatch, studies_process,
                                                                      tiny_spec):
    import pandas as pd

    # The machine's own thread count, as a user's run has (the suite's processes may run with one).
    monkeypatch.delenv("CAPSBENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    # Two points, so that two workers take one each: CapsNet (its routing kernels) and Efficient-CapsNet.
    spec = tiny_spec(tmp_path, name="pair", arms=[("capsnet", {"routing_iters": [1]}),
                                                  ("efficient_capsnet", {"augmentation": ["shift2"]})], batch_size=32)
    frames = []
    for workers in (1, 2):
        results = tmp_path / f"results-{workers}"
        done = studies_process("run", "--study", spec, "--profile", "smoke", "--no-progress", "--no-report",
                               "--workers", str(workers), results=results)
        _, stderr = done.communicate(timeout=600)
        assert done.returncode == 0, stderr
        storage = f"sqlite:///{results / 'smoke' / 'studies.db'}" if workers == 1 else \
            optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                str(results / "smoke" / "studies.journal")))
        trials = optuna.load_study(study_name="pair.mnist.smoke", storage=storage).get_trials()
        frames.append(pd.DataFrame([
            {"point": t.user_attrs[POINT_ATTR], "test_error": t.user_attrs["metrics"]["test_error"],
             "train_loss": t.user_attrs["metrics"]["history"][-1]["train_loss"]}
            for t in trials if t.state == TrialState.COMPLETE]).sort_values("point").reset_index(drop=True))
    assert len(frames[0]) == 2
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)  # bit for bit
