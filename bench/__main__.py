"""python -m bench: the throughput benchmark. Bad input ends with one line and exit code 2."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from studies.interrupt_line import EXIT_INTERRUPTED, after_command, guard_start_up, ignore_from_now

if __name__ == "__main__":
    guard_start_up()  # before the imports below, which take a second or more

from bench.options import PROFILES, BenchOptions  # noqa: E402
from bench.benchmark import RowAppender, run_benchmark, summary_lines, write_tables  # noqa: E402
from studies.arguments import EXIT_BAD_INPUT, OneLineParser, Option  # noqa: E402
from studies.results_location import ensure_writable, results_dir  # noqa: E402
from studies.errors import USER_ERRORS  # noqa: E402
from studies.write_faults import WriteFailed, disk_fault  # noqa: E402

OPTIONS = (
    Option("--profile", f"one of {', '.join(PROFILES)} (sets sizes and repeats)", BenchOptions, "profile",
           {"default": "quick"}),
    Option("--models", "comma-separated model names (default: every single-label model)", BenchOptions, "models",
           listed=True),
    Option("--batch-sizes", "comma-separated (default: the profile's)", BenchOptions, "batch_sizes", listed=True),
    Option("--device", "auto, cpu, cuda, cuda:1, ...", BenchOptions, "device", {"default": "auto"}),
    Option("--bf16", "bf16 autocast (CUDA, or a CPU with AMX or AVX512-BF16)",
           argparse_kwargs={"action": "store_true"}),
    Option("--channels-last", "channels_last memory format", argparse_kwargs={"action": "store_true"}),
    Option("--compile", "torch.compile the models", argparse_kwargs={"action": "store_true"}),
    Option("--routing-iters", "CapsNet routing iterations (default: the paper's 3)", BenchOptions, "routing_iters"),
    Option("--routings", "comma-separated CapsNet routing procedures timed besides the paper's, a row each "
           "(default: every registered one; 'none' for none)", BenchOptions, "routings", listed=True),
    Option("--threads", "intra-op threads (default: the usable cores)", BenchOptions, "threads"),
    Option("--image-size", "input side in pixels", BenchOptions, "image_size", {"default": 28}),
    Option("--no-references", "skip the routing comparison and data row", argparse_kwargs={"action": "store_true"}),
    Option("--out", "results directory (default: $CAPSBENCH_RESULTS/<profile> or results/<profile>)"),
    Option("--json", "print the rows as JSON on stdout", argparse_kwargs={"action": "store_true"}),
)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m bench", description=__doc__)
    for option in OPTIONS:
        option.add_to(parser)
    return parser


def options_from_args(args) -> BenchOptions:
    return BenchOptions(
        profile=args.profile, models=args.models, batch_sizes=args.batch_sizes, device=args.device, bf16=args.bf16,
        channels_last=args.channels_last, compile=args.compile, routing_iters=args.routing_iters,
        routings=() if args.routings is not None and list(args.routings) == ["none"] else args.routings,
        threads=args.threads, image_size=args.image_size, references=not args.no_references,
    ).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = None
    # From here Ctrl-C raises KeyboardInterrupt, which ends the run in one line below (the rows
    # measured so far are on disk already, each written whole).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        options = options_from_args(args)
        # Refused before anything is measured, not after minutes of timing.
        out = ensure_writable(Path(args.out) if args.out else results_dir(options.profile))
        measured = RowAppender(out)
        rows = run_benchmark(options, log=lambda line: print(line, file=sys.stderr, flush=True), on_row=measured)
        paths = write_tables(rows, out)
        measured.finished()
        _print_results(args, rows, paths)  # still under this handler: a Ctrl-C here is no start-up one
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: the rows measured so far are in {out}" if out else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a full or read-only disk under the tables: one line, like bad input
        cause = disk_fault(error)
        if cause is None:
            raise
        print(f"error: {WriteFailed(cause.filename or out, cause)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        signal.signal(signal.SIGINT, after_command(previous))
    return 0


def _print_results(args, rows: list[dict], paths: list[Path]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        for line in summary_lines(rows):
            print(line, file=sys.stderr)
    else:
        print(Path(paths[1]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


if __name__ == "__main__":
    code = main()
    ignore_from_now()
    sys.exit(code)
