"""python -m bench: the throughput benchmark. Bad input ends with one line and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import models
from bench.options import PROFILES, BenchOptions
from bench.run import run_benchmark, summary_lines, write_tables
from models.cpu.allocator import pin_malloc_thresholds
from studies.engine.storage import results_dir
from studies.errors import USER_ERRORS

EXIT_BAD_INPUT = 2


def _int_list(text: str, what: str) -> tuple[int, ...]:
    values = []
    for item in text.replace(",", " ").split():
        try:
            values.append(int(item))
        except ValueError:
            raise ValueError(f"{what} must be integers, got {item!r}") from None
    if not values:
        raise ValueError(f"{what} must not be empty")
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", default="quick", help=f"one of: {', '.join(PROFILES)} (sets sizes and repeats)")
    parser.add_argument("--models", help=f"comma-separated, default all: {', '.join(models.names())}")
    parser.add_argument("--batch-sizes", help="comma-separated, default the profile's")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--routing-iters", help="CapsNet routing iterations (default: the paper's 3)")
    parser.add_argument("--threads", help="intra-op threads (default: the usable cores)")
    parser.add_argument("--image-size", default="28", help="input side in pixels (default 28)")
    parser.add_argument("--no-references", action="store_true", help="skip the routing comparison and data row")
    parser.add_argument("--out", help="results directory (default: $CAPSBENCH_RESULTS/<profile> or results/<profile>)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    return parser


def _single_int(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    values = _int_list(text, what)
    if len(values) != 1:
        raise ValueError(f"{what} takes one integer, got {text!r}")
    return values[0]


def options_from_args(args) -> BenchOptions:
    return BenchOptions(
        profile=args.profile,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None,
        batch_sizes=_int_list(args.batch_sizes, "batch sizes") if args.batch_sizes is not None else None,
        device=args.device,
        bf16=args.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
        routing_iters=_single_int(args.routing_iters, "--routing-iters"),
        threads=_single_int(args.threads, "--threads"),
        image_size=_single_int(args.image_size, "--image-size"),
        references=not args.no_references,
    ).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pin_malloc_thresholds()  # process-wide, so set here: a row's speed must not depend on the rows before it
    try:
        options = options_from_args(args)
        out = Path(args.out) if args.out else results_dir(options.profile)
        rows = run_benchmark(options, log=lambda line: print(line, file=sys.stderr, flush=True))
        paths = write_tables(rows, out)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(Path(paths[1]).read_text())
    if args.json:
        for line in summary_lines(rows):
            print(line, file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
