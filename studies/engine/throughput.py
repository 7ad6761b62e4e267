"""The `throughput` study: the benchmark of bench/, measured once per profile, machine and dtype."""
from __future__ import annotations

import re

from tqdm.auto import tqdm

from studies.run_options import RunOptions
from studies.spec.study import StudySpec


def machine_slug(name: str) -> str:
    """A file-name part for a machine's name: "AMD EPYC 7B13 64-Core Processor" -> "amd-epyc-7b13-64-core-processor"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "unknown"


def run_throughput(spec: StudySpec, options: RunOptions) -> dict[str, int]:
    """Measure in float32 and, where the device has bf16 matrix units (the studies train with
    them), in bf16 too, the latter without the routing comparison (it is about float32 code).
    Tables are named after the machine (the CPU's model or the GPU's name): a table this profile
    already holds for this machine and dtype is kept (delete it to re-measure); one measured on
    another machine is never taken for this one's, and never replaced."""
    from bench.benchmark import BenchOptions, run_benchmark, write_tables
    from studies.results_location import ensure_writable
    from studies.training.devices import bf16_supported, machine_name, resolve_device

    out = ensure_writable(options.results)
    device = resolve_device(options.device)
    machine = machine_name(device)
    runs = {"fp32": BenchOptions(profile=options.profile, device=options.device)}
    if bf16_supported(device):
        runs["bf16"] = BenchOptions(profile=options.profile, device=options.device, bf16=True, references=False)
    for dtype, bench_options in runs.items():
        stem = f"throughput-{device.type}-{machine_slug(machine)}-{dtype}"
        if (out / f"{stem}.csv").exists():
            tqdm.write(f"throughput: {stem}.csv ({machine}) exists; delete it to measure again")
            continue
        files = write_tables(run_benchmark(bench_options, log=tqdm.write), out, stem)
        tqdm.write("throughput: wrote " + ", ".join(f.name for f in files))
    return {"done": len(runs)}
