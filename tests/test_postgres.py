"""Workers sharing one study on a real PostgreSQL server that this module starts itself.

The server comes from Debian's `postgresql` package (`.ci/run` installs it when run as root);
where no server binary is found the server test is skipped with a message saying how to install it
(under CI, where `.ci/run` should have installed it, it fails instead).
"""
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from studies.store.storage import open_storage

pytestmark = [pytest.mark.data, pytest.mark.e2e]  # a PostgreSQL server and `python -m studies` runs

SERVER_TOOLS = ("initdb", "pg_ctl", "pg_isready", "createdb")
INSTALL_HINT = (f"no PostgreSQL server binaries ({', '.join(SERVER_TOOLS)}) found; install them with "
                "`apt-get install postgresql` (or run `bash .ci/run` as root, which installs them)")


def _version_key(path: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, initdb on PATH, else the
    newest /usr/lib/postgresql/<version>/bin (Debian keeps the server binaries off PATH)."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(os.path.realpath(shutil.which("initdb"))))
    # libpq-dev's pg_config names the server's bindir even when the server is not installed.
    candidates += sorted((os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                         key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in SERVER_TOOLS):
            return Path(directory)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL server on 127.0.0.1:<free port> with an empty database; its URL."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):  # CI must run this for real; .ci/run installs the server
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    as_root = os.geteuid() == 0
    if as_root:  # initdb refuses to run as root: the server runs as the `postgres` system user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no `postgres` system user to run the server as; "
                        "`apt-get install postgresql` creates it")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail("running as root and `runuser` is missing: cannot start PostgreSQL as `postgres`")
        run_as = [runuser, "-u", "postgres", "--"]
    else:
        run_as = []

    base = Path(tempfile.mkdtemp(prefix="capsbench-pg-"))
    base.chmod(0o755)  # the server user must be able to traverse into it
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    for directory in (data, sockets):
        directory.mkdir(mode=0o700)
    log.touch()
    if as_root:
        for path in (data, sockets, log):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def pg(tool, *args, timeout=60):
        return subprocess.run([*run_as, str(bindir / tool), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    started = False
    try:
        init = pg("initdb", "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=50"
        started = True  # from here on, always try to stop it
        start = pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start", timeout=90)
        assert start.returncode == 0, f"pg_ctl start failed:\n{start.stderr}\n{log.read_text()}"
        # pg_ctl -w already waited; make sure TCP connections are accepted too. The client tools
        # (not a Python driver) keep the fixture independent of the driver the project uses.
        tcp = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        deadline = time.monotonic() + 30
        while pg("pg_isready", *tcp, "-t", "2", timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL on port {port} did not accept connections:\n{log.read_text()}")
            time.sleep(0.2)
        created = pg("createdb", *tcp, "capsbench")
        assert created.returncode == 0, f"createdb failed: {created.stderr}"
        yield f"postgresql://postgres@127.0.0.1:{port}/capsbench"
    finally:
        if started:
            try:
                stopped = pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60).returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            pid_file = data / "postmaster.pid"
            if not stopped and pid_file.exists():  # last resort: the postmaster this fixture started
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
                except (OSError, ValueError, IndexError):
                    pass
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def studies(run_process):
    """`python -m studies ...` with a time limit; on expiry its whole process group (the CLI
    and the workers it started) is killed, so a hang fails the test instead of blocking it."""
    return lambda *args, results, timeout: run_process("studies", *args, results=results, timeout=timeout,
                                                       stdin=subprocess.DEVNULL)


def test_unreachable_postgres_fails_in_one_line(tmp_path, studies, tiny_spec):
    port = free_port()  # nothing listens there once the probe socket is closed
    url = f"postgresql://postgres@127.0.0.1:{port}/capsbench"
    started = time.monotonic()
    spec = tiny_spec(tmp_path, dataset="mnist", seeds=(0, 1))
    done = studies("run", "--study", spec, "--profile", "smoke", "--storage", url, "--no-progress",
                   results=tmp_path / "results", timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage postgresql"), done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    # the failure must be the refused connection, not e.g. a missing database driver
    assert "connect" in lines[0].lower() and "import" not in lines[0].lower(), lines[0]
    assert elapsed < 30


@pytest.fixture
def points_spec(tiny_spec):
    """<name>.toml: efficient_capsnet (the fastest registered model to train on a CPU) x augmentation
    {none, shift2} x seeds 0-3, 8 points."""
    return lambda directory, name, train_size: tiny_spec(
        directory, name=name, seeds=range(4), train_size=train_size, test_size=50,
        arms=[("efficient_capsnet", {"augmentation": ["none", "shift2"]})])


def exactly_once(trials):
    completed = Counter(t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(completed) == 8 and set(completed.values()) == {1}, completed


def test_workers_share_one_postgres_study_and_train_every_point_exactly_once(postgres_url, tmp_path, studies,
                                                                             points_spec):
    spec = points_spec(tmp_path, "quad", 32)  # 8 points
    results = tmp_path / "results"
    done = studies("run", "--study", spec, "--profile", "smoke", "--workers", "3", "--storage", postgres_url,
                   "--no-progress", results=results, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 workers, storage: postgresql://" in done.stdout
    # read back through the project's own storage opener, as the report does
    trials = optuna.load_study(study_name="quad.mnist.smoke", storage=open_storage(postgres_url)).get_trials()
    exactly_once(trials)
    # Enqueuing happens under a database lock: no point was ever enqueued, claimed or trained twice.
    assert len(trials) == 8 and sum("config" in t.user_attrs for t in trials) == 8
    frame = pd.read_csv(results / "smoke" / "quad-trials.csv")
    assert sorted(zip(frame["augmentation"], frame["seed"])) == sorted(
        (augmentation, seed) for augmentation in ("none", "shift2") for seed in range(4))
    assert (results / "smoke" / "REPORT.md").stat().st_size > 0


KILLS = 3


@pytest.mark.slow
def test_chaos_killed_workers_lose_no_result(postgres_url, tmp_path, studies, points_spec, run_process):
    """Three workers; a killer sends SIGKILL to a random one every few seconds (three times, then
    stops) and starts a new one in its place. In the end every point has exactly one completed
    trial, every result seen completed is still there, and the report builds."""
    import random

    spec = points_spec(tmp_path, "chaos", 960)  # a few seconds a trial: workers are killed mid-trial
    results = tmp_path / "results"
    args = ["run", "--study", str(spec), "--profile", "smoke", "--storage", postgres_url, "--heartbeat", "1",
            "--grace", "3", "--no-progress", "--no-report"]

    def start():  # one thread each: three workers share the machine's cores instead of oversubscribing them
        return run_process("studies", *args, results=results, env={"CAPSBENCH_THREADS": 1}, wait=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           start_new_session=True)

    storage = open_storage(postgres_url)
    rng = random.Random(0)
    workers = [start() for _ in range(3)]
    seen: dict[int, tuple[str, float]] = {}
    kills, next_kill = 0, time.monotonic() + rng.uniform(4, 6)  # the first workers are training by then
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and any(w.poll() is None for w in workers):
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name="chaos.mnist.smoke", storage=storage).get_trials()
            except KeyError:
                continue
            for trial in trials:
                if trial.state == TrialState.COMPLETE:
                    seen.setdefault(trial.number, (trial.user_attrs["point"], trial.value))
            if kills < KILLS and time.monotonic() > next_kill:
                alive = [w for w in workers if w.poll() is None]
                if alive:
                    victim = rng.choice(alive)
                    os.killpg(victim.pid, signal.SIGKILL)
                    victim.wait()
                    workers[workers.index(victim)] = start()
                    kills += 1
                next_kill = time.monotonic() + rng.uniform(1.5, 3.5)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert kills == KILLS
    final = studies(*args, results=results, timeout=120)  # one more worker finishes what is left
    assert final.returncode == 0, final.stderr
    trials = optuna.load_study(study_name="chaos.mnist.smoke", storage=storage).get_trials()
    exactly_once(trials)
    by_number = {t.number: t for t in trials}
    for number, (point, value) in seen.items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value, number
    report = studies("report", "--study", spec, "--profile", "smoke", "--storage", postgres_url,
                     results=results, timeout=120)
    assert report.returncode == 0, report.stderr
    assert (results / "smoke" / "REPORT.md").stat().st_size > 0
