"""Command line: `python -m studies <command>`. Bad input ends with one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

import models
from studies.data.augment import AUGMENTATION_FORMS

EXIT_BAD_INPUT = 2


def _add_train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train one configuration and print its metrics")
    parser.add_argument("--model", default="capsnet", help=f"one of: {', '.join(models.names())}")
    parser.add_argument("--dataset", default="mnist", help="mnist or fashion_mnist")
    parser.add_argument("--routing-iters", type=int, help="CapsNet routing iterations (paper: 3)")
    parser.add_argument("--recon-weight", type=float, help="CapsNet reconstruction weight (paper: 0.0005)")
    parser.add_argument("--detach-inner", action="store_true", help="CapsNet: detach u_hat in inner routing iterations")
    parser.add_argument("--no-decoder", action="store_true", help="CapsNet without the reconstruction decoder")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any other model option, value parsed as JSON (e.g. --option margin_convention='\"official\"')",
    )
    parser.add_argument("--aug", default="shift2", help=f"augmentation: {', '.join(AUGMENTATION_FORMS)}")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, help="use the first N training images (default: all)")
    parser.add_argument("--val-size", type=int, default=0, help="hold out the last N training images")
    parser.add_argument("--test-size", type=int, help="test on the first N test images (default: all 10k)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--data-root", help="dataset root (default: $CAPSBENCH_DATA or ./data)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=_run_train)


def _add_data_parser(commands) -> None:
    parser = commands.add_parser("data", help="make sure the datasets are present, fetching or converting them")
    parser.add_argument("--dataset", action="append", help="dataset(s) to prepare (default: mnist and fashion_mnist)")
    parser.add_argument("--data-root", help="dataset root (default: $CAPSBENCH_DATA or ./data)")
    parser.set_defaults(run=_run_data)


def _model_options(args) -> dict:
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
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
    from studies.training.config import TrainConfig
    from studies.training.train import train

    config = TrainConfig(
        model=args.model,
        model_options=_model_options(args),
        dataset=args.dataset,
        augmentation=args.aug,
        epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    result = train(config)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    print(
        f"{config.model} on {config.dataset}: test accuracy {100 * result.test_accuracy:.2f}% "
        f"(error {100 * result.test_error:.2f}%) on {result.test_images} test images\n"
        f"  trained on {result.train_images} images x {config.epochs} epoch(s), aug {config.augmentation}, "
        f"seed {config.seed}, {result.params:,} parameters\n"
        f"  {result.train_seconds:.1f} s training, {result.train_images_per_s:.0f} images/s, "
        f"device {result.device}, torch {result.torch_version}"
    )
    for record in result.history:
        print("  epoch " + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch") + f" [{record['epoch']}]")


def _run_data(args) -> None:
    from studies.data import datasets

    for name in args.dataset or list(datasets.DATASETS):
        path = datasets.prepare(name, args.data_root)
        print(f"{name}: ready in {path}")


def _add_study_arguments(parser) -> None:
    parser.add_argument("--study", action="append", help="built-in study name or spec file (default: all built-in)")
    parser.add_argument("--profile", default="quick", help="smoke, quick, standard or paper")
    parser.add_argument("--dataset", help="override the spec's dataset (mnist, fashion_mnist)")
    parser.add_argument("--storage", help="Optuna storage URL or journal:<path> (default: SQLite under results/<profile>)")
    parser.add_argument("--results", help="results root (default: $CAPSBENCH_RESULTS or ./results)")


def _add_run_parser(commands) -> None:
    parser = commands.add_parser("run", help="train every missing trial of the studies, then rebuild the report")
    _add_study_arguments(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", help="dataset root (default: $CAPSBENCH_DATA or ./data)")
    parser.add_argument("--no-report", action="store_true", help="do not rebuild the report afterwards")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds without heartbeat before a trial counts as dead")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine sharing the studies (journal storage by default)")
    parser.set_defaults(run=_run_studies)


def _add_report_parser(commands) -> None:
    parser = commands.add_parser("report", help="rebuild tables, figures and REPORT.md from stored trials")
    _add_study_arguments(parser)
    parser.set_defaults(run=_run_report)


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


def _run_options(args):
    from studies.engine.runner import RunOptions

    return RunOptions(
        profile=args.profile, storage=args.storage, results_root=args.results,
        device=getattr(args, "device", "auto"), data_root=getattr(args, "data_root", None),
        progress=not getattr(args, "no_progress", False),
        heartbeat_s=getattr(args, "heartbeat", 10.0), grace_s=getattr(args, "grace", 60.0),
        workers=getattr(args, "workers", 1),
    )


def _run_workers(args, argv: list[str]) -> None:
    """Start `--workers` copies of this command as one-worker processes on one storage."""
    import subprocess

    from studies.engine.storage import default_url, ensure_writable, open_storage, results_dir

    directory = ensure_writable(results_dir(args.profile, args.results))
    storage = args.storage or default_url(directory, args.workers)
    # Creates the storage's tables once: workers creating them at the same moment collide
    # (optuna/optuna#1092). A bad URL fails here, in one line.
    open_storage(storage, directory)
    print(f"{args.workers} workers on {storage}")
    child = [sys.executable, "-m", "studies", *_without(argv, {"--workers", "--storage"}),
             "--workers", "1", "--no-report", "--no-progress", "--storage", storage]
    # Split the cores between the workers instead of oversubscribing them.
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = dict(os.environ, CAPSBENCH_THREADS=str(threads))
    workers = [subprocess.Popen(child, env=env) for _ in range(args.workers)]
    failed = sum(worker.wait() != 0 for worker in workers)
    if failed:
        raise SystemExit(f"error: {failed} of {args.workers} workers failed; see their messages above")
    args.storage = storage


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

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    specs = _selected_specs(args)
    if args.workers > 1:
        _run_workers(args, args.argv)
        if not args.no_report:
            options = _run_options(args)
            _write_report(_with_stored_builtins(specs, args, options), options)
        return
    options = _run_options(args)
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

    from studies.engine.runner import study_name
    from studies.engine.storage import open_storage
    from studies.spec.study import builtin_names, load_spec

    stored = set(optuna.get_all_study_names(open_storage(options.storage, options.results, options.workers)))
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
    from studies.engine.storage import ensure_writable, results_dir
    from studies.report.build import build_report

    out = ensure_writable(results_dir(options.profile, options.results_root))
    print(f"report: {build_report(specs, options, out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studies", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands)
    _add_data_parser(commands)
    _add_run_parser(commands)
    _add_report_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    from models.cpu.allocator import pin_malloc_thresholds

    pin_malloc_thresholds()  # process-wide: every training step then starts from the same allocator
    if os.environ.get("CAPSBENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["CAPSBENCH_THREADS"]))
    from studies.errors import USER_ERRORS

    try:
        args.run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
