"""The `throughput` study: the benchmark of bench/, measured once per profile and device."""
from __future__ import annotations

from tqdm.auto import tqdm

from studies.engine.runner import RunOptions
from studies.spec.study import StudySpec


def run_throughput(spec: StudySpec, options: RunOptions) -> dict[str, int]:
    """Measure in float32 and, where the device has bf16 matrix units (the studies train with
    them), in bf16 too, the latter without the routing comparison (it is about float32 code);
    a table this profile already holds for the device and dtype is kept (delete it to re-measure)."""
    from bench.run import BenchOptions, run_benchmark, write_tables
    from studies.engine.storage import ensure_writable
    from studies.training.devices import bf16_supported, resolve_device

    out = ensure_writable(options.results)
    device = resolve_device(options.device)
    runs = {"fp32": BenchOptions(profile=options.profile, device=options.device)}
    if bf16_supported(device):
        runs["bf16"] = BenchOptions(profile=options.profile, device=options.device, bf16=True, references=False)
    for dtype, bench_options in runs.items():
        existing = out / f"throughput-{device.type}-{dtype}.csv"
        if existing.exists():
            tqdm.write(f"throughput: {existing.name} exists; delete it to measure again")
            continue
        files = write_tables(run_benchmark(bench_options, log=tqdm.write), out)
        tqdm.write("throughput: wrote " + ", ".join(f.name for f in files))
    return {"done": len(runs)}
