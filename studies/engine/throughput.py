"""The `throughput` study: the benchmark of bench/, measured once per profile and device."""
from __future__ import annotations

from tqdm.auto import tqdm

from studies.engine.runner import RunOptions
from studies.spec.study import StudySpec


def run_throughput(spec: StudySpec, options: RunOptions) -> dict[str, int]:
    """Measure unless this profile already holds a table for this device (delete it to re-measure)."""
    from bench.run import BenchOptions, run_benchmark, write_tables
    from studies.engine.storage import ensure_writable
    from studies.training.devices import resolve_device

    out = ensure_writable(options.results)
    device = resolve_device(options.device).type
    existing = sorted(out.glob(f"throughput-{device}-*.csv"))
    if existing:
        tqdm.write(f"throughput: {existing[0].name} exists; delete it to measure again")
        return {"done": len(existing)}
    rows = run_benchmark(BenchOptions(profile=options.profile, device=options.device), log=tqdm.write)
    files = write_tables(rows, out)
    tqdm.write("throughput: wrote " + ", ".join(f.name for f in files))
    return {"done": 1}
