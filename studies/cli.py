"""Command line: `python -m studies <command>`. Bad input ends with one line and exit code 2.

Every option is declared once in OPTIONS: its flag, and the dataclass field whose annotation
judges its value (TrainConfig, a model's config, RunOptions), so a command-line value is checked
exactly as the same value in a spec file or in Python."""
from __future__ import annotations

import json
import os
import sys

import models
from models.capsnet import CapsNetConfig
from models.fields import ConfigError
from studies.arguments import EXIT_BAD_INPUT, OneLineParser, Option, port_number
from studies.interrupt_line import EXIT_INTERRUPTED, WORKER_ENV, after_command, say
from studies.run_options import RunOptions
from studies.spec.schema import PROFILES
from studies.training import stop
from studies.training.config import TrainConfig
from studies.write_faults import WriteFailed, disk_fault


DATA_ROOT = Option("--data-root", "dataset root (default: $CAPSBENCH_DATA or ./data)")
STUDY_OPTIONS = (
    Option("--study", "built-in study name or spec file (default: all built-in)", argparse_kwargs={"action": "append"}),
    Option("--profile", f"one of {', '.join(PROFILES)}", RunOptions, "profile", {"default": "quick"}),
    Option("--dataset", "override the spec's dataset (mnist, fashion_mnist)", TrainConfig, "dataset"),
    Option("--storage", "Optuna storage URL or journal:<path> (default: the profile's file under results/)"),
    Option("--results", "results root (default: $CAPSBENCH_RESULTS or ./results)"),
)
OPTIONS: dict[str, tuple[Option, ...]] = {
    "train": (
        Option("--model", "the model to train", argparse_kwargs={"default": "capsnet", "choices": models.names()}),
        Option("--dataset", "mnist or fashion_mnist", TrainConfig, "dataset", {"default": "mnist"}),
        Option("--routing-iters", "CapsNet routing iterations (paper: 3)", CapsNetConfig, "routing_iters"),
        Option("--recon-weight", "CapsNet reconstruction weight (paper: 0.0005)", CapsNetConfig, "recon_weight"),
        Option("--detach-inner", "CapsNet: detach u_hat in inner routing iterations",
               argparse_kwargs={"action": "store_true"}),
        Option("--no-decoder", "CapsNet without the reconstruction decoder", argparse_kwargs={"action": "store_true"}),
        Option("--option", "any other model option, value parsed as JSON (e.g. --option margin_convention='\"official\"')",
               argparse_kwargs={"action": "append", "default": [], "metavar": "KEY=VALUE"}),
        Option("--aug", "augmentation: none, shift<N>, rotate<D>, affine", TrainConfig, "augmentation",
               {"default": "shift2"}),
        Option("--epochs", "epochs", TrainConfig, "epochs", {"default": 1}),
        Option("--train-size", "train on a class-stratified random N of the training images (default: all but "
               "the validation split)", TrainConfig, "train_size"),
        Option("--val-size", "hold out a class-stratified random N of the training images for validation",
               TrainConfig, "val_size", {"default": 0}),
        Option("--test-size", "test on a class-stratified random N of the test images (default: all 10k)",
               TrainConfig, "test_size"),
        Option("--split-seed", "seed of the stratified training, validation and test subsets", TrainConfig,
               "split_seed", {"default": 0}),
        Option("--batch-size", "batch size", TrainConfig, "batch_size", {"default": 128}),
        Option("--lr", "Adam learning rate", TrainConfig, "lr", {"default": 1e-3}),
        Option("--seed", "seed of the weights, the data order and the augmentation", TrainConfig, "seed",
               {"default": 0}),
        Option("--device", "auto, cpu, cuda, cuda:1, ...", TrainConfig, "device", {"default": "auto"}),
        Option("--bf16", "bf16 autocast (CUDA, or a CPU with AMX or AVX512-BF16)",
               argparse_kwargs={"action": "store_true"}),
        DATA_ROOT,
        Option("--json", "print the metrics as JSON", argparse_kwargs={"action": "store_true"}),
        Option("--no-progress", "no progress bars (they are drawn on a terminal only)",
               argparse_kwargs={"action": "store_true"}),
    ),
    "data": (
        Option("--dataset", "dataset(s) to prepare (default: mnist and fashion_mnist)", TrainConfig, "dataset",
               {"action": "append"}),
        DATA_ROOT,
    ),
    "run": STUDY_OPTIONS + (
        Option("--device", "auto, cpu, cuda, cuda:1, ...", TrainConfig, "device", {"default": "auto"}),
        DATA_ROOT,
        Option("--no-report", "do not rebuild the report afterwards", argparse_kwargs={"action": "store_true"}),
        Option("--no-progress", "no progress bars (they are drawn on a terminal only)",
               argparse_kwargs={"action": "store_true"}),
        Option("--heartbeat", "seconds between a running trial's heartbeats (server storages)", RunOptions,
               "heartbeat_s", {"default": 10.0}),
        Option("--grace", "seconds without a heartbeat (or a lease) before a trial's worker counts as gone",
               RunOptions, "grace_s", {"default": 60.0}),
        Option("--workers", "worker processes on this machine sharing the studies (journal storage)", RunOptions,
               "workers", {"default": 1}),
        Option("--retry-failed", "give points that failed for good another round",
               argparse_kwargs={"action": "store_true"}),
    ),
    "report": STUDY_OPTIONS,
    "dashboard": (
        Option("--profile", f"one of {', '.join(PROFILES)}", RunOptions, "profile", {"default": "quick"}),
        Option("--storage", "Optuna storage URL or journal:<path> (default: the profile's file under results/)"),
        Option("--results", "results root (default: $CAPSBENCH_RESULTS or ./results)"),
        Option("--port", "the dashboard's port on 127.0.0.1", argparse_kwargs={"type": port_number, "default": 8080}),
    ),
    "migrate": (
        Option("--profile", f"one of {', '.join(PROFILES)}", RunOptions, "profile", {"default": "quick"}),
        Option("--results", "results root (default: $CAPSBENCH_RESULTS or ./results)"),
        Option("--from", "source storage (default: the profile's studies.db)", argparse_kwargs={"dest": "source"}),
        Option("--to", "destination storage (default: the profile's studies.journal)",
               argparse_kwargs={"dest": "destination"}),
    ),
}
HELP = {
    "train": "train one configuration and print its metrics",
    "data": "make sure the datasets are present, fetching or converting them",
    "run": "train every missing trial of the studies, then rebuild the report",
    "report": "rebuild tables, figures and REPORT.md from stored trials",
    "dashboard": "open optuna-dashboard on the profile's stored studies (install: make dashboard)",
    "migrate": "copy a profile's studies from one storage to another (e.g. SQLite to the journal for workers)",
}


def _model_options(args) -> dict:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.routing_iters is not None:
        options["routing_iters"] = args.routing_iters
    if args.recon_weight is not None:
        options["recon_weight"] = args.recon_weight
    if args.detach_inner:
        options["detach_inner"] = True
    if args.no_decoder:
        options["decoder"] = False
    # Validate against the model's config now, before any data is loaded.
    models.make_config(args.model, **options)
    return options


def _run_train(args) -> None:
    from studies.training.speed_choice import measured_plan
    from studies.training.loop import train

    config = TrainConfig(
        model=args.model, model_options=_model_options(args), dataset=args.dataset, augmentation=args.aug,
        epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
        split_seed=args.split_seed,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, bf16=args.bf16,
        data_root=args.data_root, progress=_progress_bars(args),
    )
    result = train(config, speed_plan=measured_plan)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    print(
        f"{config.model} on {config.dataset}: test accuracy {100 * result.test_accuracy:.2f}% "
        f"(error {100 * result.test_error:.2f}%) on {result.test_images} test images\n"
        f"  trained on {result.train_images} images x {config.epochs} epoch(s), aug {config.augmentation}, "
        f"seed {config.seed}, {result.params:,} parameters, {'bf16' if config.bf16 else 'float32'}\n"
        f"  {result.train_seconds:.1f} s training, {result.train_images_per_s:.0f} images/s, "
        f"device {result.device}, torch {result.torch_version}"
    )
    for record in result.history:
        print("  epoch " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch") + f" [{record['epoch']}]")


def _run_data(args) -> None:
    from studies.data import datasets

    names = args.dataset or list(datasets.DATASETS)
    # Every present file is checked before anything is fetched: a damaged one stops everything.
    datasets.check_present(names, args.data_root)
    for name in names:
        path = datasets.prepare(name, args.data_root)
        unverified = datasets.get_info(name).unverified()
        checked = (f"unverified: no published checksum for {', '.join(unverified)}; structure and labels checked"
                   if unverified else "sha256 of every file as published")
        print(f"{name}: ready in {path} ({checked})")


def _selected_specs(args, announce: bool = True):
    """The studies named (each must support the dataset and profile asked for: else one line and
    exit 2), or every built-in study that defines the profile and supports the dataset; the ones
    left out are named."""
    from studies.spec.study import builtin_names, load_spec

    if args.study:
        specs = [load_spec(name, args.dataset) for name in args.study]
        for spec in specs:
            spec.profile(args.profile)  # an explicitly chosen study must define the profile
        return specs
    specs, skipped = [], []
    for name in builtin_names():
        spec = load_spec(name)
        if args.dataset is not None and not spec.supports(args.dataset):
            skipped.append(f"{name} (runs on {', '.join(spec.datasets)} only)")
        elif args.profile not in spec.profiles:
            skipped.append(f"{name} (no {args.profile} profile)")
        else:
            specs.append(load_spec(name, args.dataset))
    if skipped and announce:
        print("skipped: " + "; ".join(skipped), file=sys.stderr)
    return specs


def _progress_bars(args) -> bool:
    """Progress bars on a terminal only: in a log file or CI their redraws would fill it with carriage
    returns, where the one line per finished trial and per stage says what happened."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _run_options(args, **changes) -> RunOptions:
    values = dict(
        profile=args.profile, storage=args.storage, results_root=args.results,
        device=getattr(args, "device", "auto"), data_root=getattr(args, "data_root", None),
        progress=_progress_bars(args),
        heartbeat_s=getattr(args, "heartbeat", 10.0), grace_s=getattr(args, "grace", 60.0),
        workers=getattr(args, "workers", 1), retry_failed=getattr(args, "retry_failed", False),
    )
    values.update(changes)
    return RunOptions(**values)


def _run_workers(args, options: RunOptions) -> RunOptions:
    """Start `workers` copies of this command as one-worker processes on one storage; the options
    of the storage they shared."""
    import subprocess

    from studies.results_location import ensure_writable
    from studies.store.storage import choose_storage, open_storage

    choice = choose_storage(options.storage, ensure_writable(options.results), options.workers)
    # Creates the storage's tables once: workers creating them at the same moment collide
    # (optuna/optuna#1092). A bad URL fails here, in one line.
    open_storage(choice)
    print(f"{options.workers} workers, {choice.describe()}")
    child = [sys.executable, "-m", "studies", *_without(args.argv, {"--workers", "--storage"}),
             "--workers", "1", "--no-report", "--no-progress", "--storage", choice.url]
    # Every worker keeps the thread count a single worker would use (the cores may be
    # oversubscribed): a reduction's result depends on how many threads split it, and the same
    # seed must give the same numbers whatever WORKERS is.
    workers = [subprocess.Popen(child, env={**os.environ, WORKER_ENV: "1"}) for _ in range(options.workers)]
    try:
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C and record their trials as interrupted
        for worker in workers:
            worker.wait()
        raise
    failed = sum(code != 0 for code in codes)
    if failed:
        raise SystemExit(f"error: {failed} of {options.workers} workers failed; see their messages above")
    return _run_options(args, storage=choice.url, workers=1)


def _without(argv: list[str], flags: set[str]) -> list[str]:
    """`argv` without the given value-taking options (as `--flag value` or `--flag=value`)."""
    kept, skip_value = [], False
    for item in argv:
        if skip_value:
            skip_value = False
        elif item.split("=", 1)[0] in flags:
            skip_value = "=" not in item
        else:
            kept.append(item)
    return kept


def _run_studies(args) -> None:
    from studies.engine.runner import run_study

    specs = _selected_specs(args)
    options = _run_options(args)
    if options.workers > 1:
        options = _run_workers(args, options)
    else:
        for spec in specs:
            if spec.kind == "throughput":
                from studies.engine.throughput import run_throughput

                counts = run_throughput(spec, options)
            else:
                counts = run_study(spec, options)
            print(f"{spec.name} [{spec.dataset}, {args.profile}]: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if not args.no_report:
        _write_report(_with_stored_builtins(specs, args, options), options)


def _with_stored_builtins(specs, args, options):
    """`specs` plus every other built-in study this profile already holds in storage, so that
    REPORT.md still covers them all after a run of one study."""
    import optuna

    from studies.store.records import study_name
    from studies.store.storage import choose_storage, open_storage
    from studies.spec.study import builtin_names, load_spec

    stored = set(optuna.get_all_study_names(open_storage(choose_storage(options.storage, options.results))))
    ran = {spec.name for spec in specs}
    others = [load_spec(name) for name in builtin_names() if name not in ran]
    others = [load_spec(spec.name, args.dataset) for spec in others
              if args.dataset is None or spec.supports(args.dataset)]
    return list(specs) + [
        spec for spec in others if args.profile in spec.profiles and study_name(spec, args.profile) in stored
    ]


def _run_report(args) -> None:
    _write_report(_selected_specs(args), _run_options(args))


def _write_report(specs, options) -> None:
    from studies.results_location import ensure_writable
    from studies.report.build import build_report

    out = ensure_writable(options.results)
    print(f"report: {build_report(specs, options, out)}")


def _run_migrate(args) -> None:
    from studies.results_location import results_dir
    from studies.store.storage import JOURNAL_NAME, SQLITE_NAME, migrate, parse_url

    directory = results_dir(args.profile, args.results)
    source = parse_url(args.source or f"sqlite:///{directory / SQLITE_NAME}")
    destination = parse_url(args.destination or f"journal:{directory / JOURNAL_NAME}")
    if source.path is not None and not source.path.exists():
        raise ConfigError(f"nothing to migrate: {source.path} does not exist")
    names = migrate(source, destination)
    moved = f"; {source.path} moved aside to {source.path.name}.migrated" if source.path is not None else ""
    print(f"copied {len(names)} studies ({', '.join(names)}) to {destination.url}{moved}")


def _run_dashboard(args) -> None:
    """Hands the terminal to optuna-dashboard (read and browse the trials; the engine never needs it)."""
    import shutil
    from pathlib import Path

    from studies.results_location import results_dir
    from studies.store.storage import choose_storage, redact

    choice = choose_storage(args.storage, results_dir(args.profile, args.results))
    if choice.path is not None and not choice.path.exists():
        raise ConfigError(f"no stored studies at {choice.path}: run `make study PROFILE={args.profile}` first, or "
                          "name the storage with STORAGE=")
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's scripts first
    program = shutil.which("optuna-dashboard", path=search)
    if program is None:
        raise ConfigError("optuna-dashboard is not installed; `make dashboard` installs it "
                          "(or: pip install 'optuna-dashboard>=0.17,<1')")
    # The dashboard reads a journal from its file path, every other storage from its URL.
    target = str(choice.path) if choice.kind == "journal" else choice.url
    print(f"optuna-dashboard on {redact(choice.url)}: http://127.0.0.1:{args.port}/ (Ctrl-C stops it)", flush=True)
    os.execv(program, [program, target, "--host", "127.0.0.1", "--port", str(args.port)])


RUNNERS = {"train": _run_train, "data": _run_data, "run": _run_studies, "report": _run_report,
           "dashboard": _run_dashboard, "migrate": _run_migrate}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m studies", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, options in OPTIONS.items():
        sub = commands.add_parser(command, help=HELP[command], description=HELP[command])
        for option in options:
            option.add_to(sub)
        sub.set_defaults(run=RUNNERS[command])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    if os.environ.get("CAPSBENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["CAPSBENCH_THREADS"]))
    from studies.errors import USER_ERRORS

    previous = stop.install()
    try:
        args.run(args)
        stop.check()  # a signal that landed where its exception was swallowed still ends in exit 130
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as error:
        # The interrupt, surfacing as what it landed in: a half-done import, a recursion in a handler.
        if stop.requested() and isinstance(error, (ImportError, RecursionError)):
            return _interrupted()
        cause = disk_fault(error)  # a write no one named: still one line, with the file where known
        if cause is None:
            raise
        print(f"error: {WriteFailed(cause.filename or 'to disk', cause)} ({type(error).__name__})", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        stop.restore({signum: after_command(handler) for signum, handler in previous.items()})
    return 0


def _interrupted() -> int:
    say("interrupted: run the same command again to go on (a running trial resumes from its last checkpoint and "
        "used up no attempt)")
    return EXIT_INTERRUPTED
