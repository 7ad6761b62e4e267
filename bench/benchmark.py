"""The throughput benchmark: images/s of every registered model, plus the routing comparison.

`run_benchmark(options) -> rows` and `write_tables(rows, out_dir) -> paths` are the API the
study engine calls (the `throughput` study); `python -m bench` is the command line, which also
appends each row to <stem>.rows.csv as it is measured (`RowAppender`), so a run stopped part-way leaves
the rows it measured.

Rows come in three sections:
- "models": every registered model x batch size x mode (train step / inference);
- "routing": our CapsNet against reference (c), a plain autograd CapsNet (the fair comparison),
  reference (a), the broadcast implementation, and reference (b), the convolution stem alone
  (bench/references.py), at one batch size, each in a process
  of its own, warmed up until its memory settles, then timed in turn (bench/comparison.py);
  in training, except in the quick profile, also both again with nn.Conv2d for PrimaryCaps
  (`capsnet_conv2d`, `reference_b_stem_conv2d`), which separates the routing's gain from the
  DFT convolution's;
- "data": the cost of preparing one training batch on the device (uint8 slice, float
  conversion, shift2 augmentation), as a share of a CapsNet training step.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

import torch

from bench.comparison import (
    COMPARE_CONV2D,
    COMPARE_MODEL,
    COMPARED,
    REFERENCE_A,
    REFERENCE_B,
    REFERENCE_B_CONV2D,
    REFERENCE_C,
    Lockstep,
)
from bench import roofline
from bench.options import PROFILES, BenchOptions
from bench.model_steps import ModelSteps, bench_model
from bench.timing import (
    Timing,
    paired_ratio,
    peak_memory_mb,
    reset_peak_memory,
    set_threads,
    time_runs,
)
from models.cpu import kernels as cpu_kernels
from models import speed_paths
from studies.data.atomic_save import write_text_atomically
from studies.data.augment import parse_augmentation
from studies.training import speed_choice
from studies.training.devices import algorithm_settings, cpu_bf16_isa, machine_name, resolve_device

# The project's speed targets on a 2-core CPU at batch 64, 28x28, 3 routing iterations, with
# decoder. Only ratios measured in one run are judged: a shared machine's absolute speed varies
# too much from hour to hour for images/s to be.
TARGETS = {
    "speedup_vs_reference_c": 1.5,  # at least
    "speedup_vs_reference_a": 2.0,  # at least
    "time_vs_stem": 1.25,  # at most
    "data_share_pct": 5.0,  # below
}
CONV2D_STEM = {COMPARE_CONV2D: REFERENCE_B_CONV2D, REFERENCE_B_CONV2D: REFERENCE_B_CONV2D}
ROUTING_ROW_ORDER = [COMPARE_MODEL, REFERENCE_C, REFERENCE_A, REFERENCE_B, COMPARE_CONV2D, REFERENCE_B_CONV2D]


# Every row has these columns (the CSV's header, in this order).
COLUMNS = [
    "section", "model", "batch", "mode", "images_per_s", "step_ms", "step_ms_q25", "step_ms_q75",
    "spread_iqr_pct", "runs", "warmup_runs", "params", "flops_per_image", "achieved_gflop_per_s", "peak_memory_mb",
    "memory_kind", "speedup_vs_reference_c", "speedup_vs_reference_a", "time_vs_stem", "share_of_step_pct",
    "routing", "routing_iters", "speed_plan", "speed_plan_why",
    "bytes_per_image", "flop_per_byte", "bound", "attainable_gflop_per_s", "roofline_fraction",
    "image_size", "device", "device_name", "torch", "threads", "compile", "dtype", "cpu_bf16_isa", "channels_last",
    "cpu_kernels", "peak_gflop_per_s", "peak_copy_gb_per_s",
    "profile",
]
ROOFLINE = ["flops_per_image", "bytes_per_image", "flop_per_byte", "achieved_gflop_per_s", "attainable_gflop_per_s",
            "bound", "roofline_fraction"]


def _environment(options: BenchOptions, device: torch.device, threads: int, peaks: roofline.Peaks) -> dict:
    return {
        **peaks.columns(),
        "image_size": options.image_size,
        "device": device.type,
        "device_name": machine_name(device),
        "torch": torch.__version__,
        "threads": threads,
        "compile": options.compile,
        "dtype": "bf16" if options.bf16 else "fp32",
        # the CPU's bf16 matrix instructions (amx_bf16, avx512_bf16), or none
        "cpu_bf16_isa": (cpu_bf16_isa() or "none") if device.type == "cpu" else "",
        "channels_last": options.channels_last,
        # "cpp": CapsNet's routing sweeps and DFT layouts ran in models/cpu/csrc's kernels, "torch": in
        # PyTorch ops
        "cpu_kernels": cpu_kernels.version(device),
        "profile": options.profile,
    }


def _row(section, name, batch, mode, timing: Timing, warmup_runs: int, description: dict | None, memory, env) -> dict:
    median = timing.median
    row = dict.fromkeys(COLUMNS)
    row.update(env)
    row.update(
        section=section, model=name, batch=batch, mode=mode,
        images_per_s=batch / median, step_ms=1e3 * median,
        step_ms_q25=1e3 * timing.quantile(0.25), step_ms_q75=1e3 * timing.quantile(0.75),
        spread_iqr_pct=timing.iqr_pct, runs=len(timing.times), warmup_runs=warmup_runs,
    )
    if description is not None:
        row.update(description)
        row["achieved_gflop_per_s"] = row["flops_per_image"] * row["images_per_s"] / 1e9
        row.update(roofline.columns(row, roofline.Peaks(env["peak_gflop_per_s"], env["peak_copy_gb_per_s"])))
    if memory is not None:
        row["peak_memory_mb"], row["memory_kind"] = memory
    return row


def _log(message: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(message)


def _model_rows(options: BenchOptions, device, env, log, flop_counts: dict, on_row) -> list[dict]:
    profile = PROFILES[options.profile]
    rows = []
    variants = [(name, None) for name in options.models]
    if "capsnet" in options.models:  # each routing procedure right after the paper's
        at = options.models.index("capsnet") + 1
        variants[at:at] = [("capsnet", routing) for routing in options.routings]
    for model, routing in variants:
        name = model if routing is None else f"{model}/{routing}"
        for batch in options.batch_sizes:
            torch.manual_seed(options.seed)
            runner = ModelSteps(bench_model(model, options, routing), batch, options, device, flop_counts)
            choice = speed_plan_for(runner, options)
            if choice is not None:
                _log(f"{name:>12} batch {batch:>4}: speed paths {choice.plan.describe()} ({choice.why})", log)
            for mode in ("train", "infer"):
                reset_peak_memory(device)
                with speed_paths.using(choice.plan if choice else None):
                    timing = time_runs(runner.step(mode), device, profile.warmup, profile.repeats,
                                       profile.row_budget_s)
                memory = peak_memory_mb(device)
                row = _row("models", name, batch, mode, timing, profile.warmup, runner.describe(mode), memory, env)
                row.update(_plan_columns(choice, device))
                rows.append(row)
                on_row(row)
                _log(f"{name:>12} batch {batch:>4} {mode:>5}: {row['images_per_s']:8.1f} images/s "
                     f"({row['step_ms']:.1f} ms, IQR {row['spread_iqr_pct']:.0f}%)", log)
            del runner
    return rows


def speed_plan_for(runner: ModelSteps, options: BenchOptions) -> speed_choice.Choice | None:
    """The CPU speed plan training would use for this model and batch on this machine (reused from
    the machine's cache, else measured now); None where no hand-written path applies."""
    images = tuple(runner.images.shape)
    return speed_choice.plan_for(runner.model, images, options.bf16)


def _plan_columns(choice: speed_choice.Choice | None, device: torch.device) -> dict:
    if choice is None:
        why = "not the CPU" if device.type != "cpu" else "no hand-written CPU path in this model"
        return {"speed_plan": speed_paths.describe(None), "speed_plan_why": why}
    return {"speed_plan": choice.plan.describe(), "speed_plan_why": choice.why}


def _ratio_over_shared_rounds(numerator: Timing, denominator: Timing) -> float:
    """The paired ratio over the rounds both ran in: the first ones (the stem rounds come last)."""
    rounds = min(len(numerator.times), len(denominator.times))
    return paired_ratio(Timing(numerator.times[:rounds]), Timing(denominator.times[:rounds]))


def _routing_rows(options: BenchOptions, device, env, log, flop_counts: dict, on_row) -> list[dict]:
    """CapsNet vs references (c), (a) and the convolution stem (b): each in a process of its own, settled,
    then timed in turn (bench/comparison.py)."""
    profile = PROFILES[options.profile]
    batch = profile.compare_batch
    if options.profile == "smoke":  # validate() filled in batch_sizes
        batch = min(options.batch_sizes)
    conv2d_pair = (COMPARE_CONV2D, REFERENCE_B_CONV2D)
    compared = tuple(name for name in COMPARED if profile.conv2d_pair or name not in conv2d_pair)
    rows = []
    our_step_s = 0.0
    torch.manual_seed(options.seed)
    steps = ModelSteps(bench_model(COMPARE_MODEL, options), batch, options, device, flop_counts)
    choice = speed_plan_for(steps, options)
    with Lockstep(compared, options, batch, flop_counts, choice.plan if choice else None) as workers:
        for mode in ("train", "infer"):
            # The nn.Conv2d pair in training only: at inference `auto` takes nn.Conv2d anyway.
            names = [name for name in compared if mode == "train" or name not in conv2d_pair]
            _log(f"routing comparison, {mode}: settling {len(names)} models, each in its own process", log)
            # Inference needs no minimum: its heap stops growing after a step or two, while
            # training's grows in bursts over its first tens of steps. Nor does CUDA, where the
            # tensors live in the caching allocator, not the host's heap.
            min_s = profile.settle_min_s if mode == "train" and device.type == "cpu" else 0.0
            settled = workers.settle(names, mode, min_s, profile.settle_max_s, profile.settle_steps)
            timings = workers.time_rounds(names, mode, profile.compare_rounds)
            if mode == "train":
                # A step's time varies by +-10% from one step to the next here, so the ratios to the
                # stem and to reference (c) (margins of 1.25x and 1.5x) need more rounds than the 2x
                # margin over reference (a), whose steps cost 5x.
                ours = [name for name in names if name != REFERENCE_A]
                more = workers.time_rounds(ours, mode, profile.stem_rounds)
                timings.update({name: Timing(timings[name].times + more[name].times) for name in ours})
                our_step_s = timings[COMPARE_MODEL].median
            for name in sorted(names, key=ROUTING_ROW_ORDER.index):
                warmup_steps, memory_settled = settled[name]
                row = _row("routing", name, batch, mode, timings[name], warmup_steps,
                           workers.ask(name, "describe", mode), None, env)
                row.update(_plan_columns(choice, device))
                row["speedup_vs_reference_c"] = _ratio_over_shared_rounds(timings[REFERENCE_C], timings[name])
                row["speedup_vs_reference_a"] = _ratio_over_shared_rounds(timings[REFERENCE_A], timings[name])
                # against the stem that computes its convolutions the same way
                stem = CONV2D_STEM.get(name, REFERENCE_B)
                row["time_vs_stem"] = _ratio_over_shared_rounds(timings[name], timings[stem])
                rows.append(row)
                on_row(row)
                _log(f"{name:>22} batch {batch} {mode:>5}: {row['images_per_s']:8.1f} images/s, "
                     f"{row['speedup_vs_reference_c']:.2f}x reference (c), "
                     f"{row['speedup_vs_reference_a']:.2f}x reference (a), {row['time_vs_stem']:.2f}x stem "
                     f"(after {warmup_steps} warm-up steps, "
                     f"{'memory settled' if memory_settled else 'memory still growing at the cap'})", log)
    rows.append(_data_row(options, device, env, batch, our_step_s, log))
    on_row(rows[-1])
    return rows


def _data_row(options: BenchOptions, device, env, batch: int, step_s: float, log) -> dict:
    """Preparing a batch as studies/training/loop.py does: index a uint8 set kept on the device with a
    random permutation, convert to float, shift2 augmentation on the device; as a share of the
    median CapsNet training step `step_s` measured in the same run."""
    profile = PROFILES[options.profile]
    generator = torch.Generator(device=device).manual_seed(options.seed)
    store = torch.randint(0, 256, (max(4096, 4 * batch), 1, options.image_size, options.image_size),
                          dtype=torch.uint8, generator=torch.Generator().manual_seed(options.seed)).to(device)
    order = torch.randperm(store.shape[0], generator=generator, device=device)
    augment = parse_augmentation("shift2")
    position = [0]

    def prepare():
        start = position[0] % (store.shape[0] - batch + 1)
        position[0] += batch
        images = store[order[start : start + batch]].float().div_(255.0)
        return augment(images, generator)

    data = time_runs(prepare, device, warmup=2, repeats=profile.data_repeats)
    row = _row("data", "data_prep_shift2", batch, "data", data, 2, None, None, env)
    row["share_of_step_pct"] = 100.0 * data.median / step_s
    _log(f"data preparation (uint8 slice, float, shift2) batch {batch}: {row['step_ms']:.2f} ms = "
         f"{row['share_of_step_pct']:.2f}% of a CapsNet training step", log)
    return row


def run_benchmark(options: BenchOptions, log: Callable[[str], None] | None = None,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure every row of `options`; `log` receives one progress line per row, `on_row` each row as
    soon as it is measured."""
    options = options.validate()
    on_row = on_row or (lambda row: None)
    device = resolve_device(options.device)
    caller_threads = torch.get_num_threads()
    try:
        threads = set_threads(options.threads)
        profile = PROFILES[options.profile]
        _log("measuring the device's peaks (a large matrix product, a large copy)", log)
        peaks = roofline.measure_peaks(device, options.bf16, profile.peak_runs, profile.peak_matmul_side,
                                       profile.peak_copy_mb)
        env = _environment(options, device, threads, peaks)
        flop_counts: dict = {}
        with algorithm_settings(device, deterministic=False, tf32=options.bf16):  # as training runs
            rows = _model_rows(options, device, env, log, flop_counts, on_row)
        if options.references:
            rows += _routing_rows(options, device, env, log, flop_counts, on_row)
    finally:  # a library call must not leave the caller's process on other thread counts
        torch.set_num_threads(caller_threads)
    return rows


def table_stem(rows: list[dict]) -> str:
    """throughput-<device>-<dtype>[-compiled], the name of this configuration's tables."""
    first = rows[0]
    name = f"throughput-{first['device']}-{first['dtype']}"
    if first["channels_last"]:
        name += "-channels_last"
    return name + ("-compiled" if first["compile"] else "")


def primary_conv_used(row: dict) -> str:
    """How CapsNet's default `primary_conv="auto"` computed PrimaryCaps in a training row."""
    dft = "PrimaryCaps dft" in (row.get("speed_plan") or "")
    return "the DFT (models/cpu/dft_conv.py)" if dft else "nn.Conv2d"


def summary_lines(rows: list[dict]) -> list[str]:
    """CapsNet's numbers against the three references and the project's targets."""
    routing = {(r["model"], r["mode"]): r for r in rows if r["section"] == "routing"}
    ours_train, ours_infer = routing.get((COMPARE_MODEL, "train")), routing.get((COMPARE_MODEL, "infer"))
    if ours_train is None or ours_infer is None:
        return []
    data = next((r for r in rows if r["section"] == "data"), None)
    batch, iters = ours_train["batch"], ours_train["routing_iters"]
    ref_a, ref_c = routing[(REFERENCE_A, "train")], routing[(REFERENCE_C, "train")]
    stem = routing[(REFERENCE_B, "train")]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        f"CapsNet, batch {batch}, {ours_train['image_size']}x{ours_train['image_size']}, {iters} routing "
        f"iterations, with decoder, {ours_train['device_name']}, {ours_train['threads']} threads:",
        f"- training: {ours_train['images_per_s']:.1f} images/s ({ours_train['step_ms']:.1f} ms/step); "
        f"inference: {ours_infer['images_per_s']:.1f} images/s",
        f"- reference (c) plain autograd CapsNet (one einsum for u_hat, routing in a few tensor ops, "
        f"nn.Conv2d): {ref_c['images_per_s']:.1f} images/s training; our step is "
        f"{ours_train['speedup_vs_reference_c']:.2f}x faster",
        f"- reference (a) broadcast u_hat: {ref_a['images_per_s']:.1f} images/s training; our step is "
        f"{ours_train['speedup_vs_reference_a']:.2f}x faster",
        f"- reference (b) convolution stem alone: {stem['images_per_s']:.1f} images/s training; our step "
        f"takes {ours_train['time_vs_stem']:.2f}x the stem's time",
    ]
    ours_conv2d, stem_conv2d = routing.get((COMPARE_CONV2D, "train")), routing.get((REFERENCE_B_CONV2D, "train"))
    if ours_conv2d is not None and stem_conv2d is not None:
        lines.append(
            f"- PrimaryCaps through {primary_conv_used(ours_train)}; with nn.Conv2d instead: CapsNet "
            f"{ours_conv2d['images_per_s']:.1f} images/s training ({ours_conv2d['speedup_vs_reference_c']:.2f}x "
            f"reference (c), {ours_conv2d['speedup_vs_reference_a']:.2f}x reference (a): the routing's share of "
            f"the gain), stem {stem_conv2d['images_per_s']:.1f} images/s"
        )
    if data is not None:
        lines.append(f"- data preparation (uint8 slice, float, shift2 on the device): {data['step_ms']:.2f} ms "
                     f"= {data['share_of_step_pct']:.2f}% of a training step")
    if (ours_train["device"], batch, ours_train["image_size"], iters) == ("cpu", 64, 28, 3):
        checks = [
            ("speedup over reference (c) >= 1.5",
             ours_train["speedup_vs_reference_c"] >= TARGETS["speedup_vs_reference_c"]),
            ("speedup over reference (a) >= 2", ours_train["speedup_vs_reference_a"] >= TARGETS["speedup_vs_reference_a"]),
            ("step <= 1.25x the stem", ours_train["time_vs_stem"] <= TARGETS["time_vs_stem"]),
        ]
        if data is not None:
            checks.append(("data preparation < 5% of a step", data["share_of_step_pct"] < TARGETS["data_share_pct"]))
        lines.append("- targets (a 2-core CPU): "
                     + "; ".join(f"{name}: {verdict(ok)}" for name, ok in checks))
    return lines


class RowAppender:
    """`on_row` for run_benchmark: appends each row to <stem>.rows.csv in `out_dir` as it is measured
    (started afresh with this run's first row of that stem), so a run stopped part-way leaves the
    rows it measured; the tables (<stem>.csv, <stem>.md) are written whole at the end, and only
    then, so a part-run is never taken for a finished table (gpu-check's summary reads the table
    where it exists, the rows otherwise)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.started: set[Path] = set()

    def __call__(self, row: dict) -> None:
        path = self.out / f"{table_stem([row])}.rows.csv"
        first = path not in self.started
        self.out.mkdir(parents=True, exist_ok=True)
        with path.open("w" if first else "a", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")  # as write_tables keeps COLUMNS only
            if first:
                writer.writeheader()
            writer.writerow(row)
        self.started.add(path)

    def finished(self) -> None:
        """The tables are written: the rows kept as they came are no longer needed."""
        for path in self.started:
            path.unlink(missing_ok=True)


def _markdown(frame, columns, floatfmt=".4g") -> str:
    present = [c for c in columns if c in frame.columns]
    return frame[present].to_markdown(index=False, floatfmt=floatfmt)


def write_tables(rows: list[dict], out_dir: str | os.PathLike, stem: str | None = None) -> list[Path]:
    """Write <stem>.csv (every row, every column) and <stem>.md (stem: `table_stem(rows)` unless
    given); return their paths."""
    import pandas as pd

    if not rows:
        raise ValueError("no benchmark rows to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or table_stem(rows)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    csv_path = out / f"{stem}.csv"
    write_text_atomically(csv_path, frame.to_csv(index=False))

    env_columns = ["device", "device_name", "torch", "threads", "compile", "dtype", "cpu_bf16_isa", "channels_last",
                   "cpu_kernels", "peak_gflop_per_s", "peak_copy_gb_per_s", "image_size", "profile"]
    measured = ["model", "batch", "mode", "images_per_s", "spread_iqr_pct", "step_ms", "step_ms_q25", "step_ms_q75",
                "runs", "warmup_runs", "params", "flops_per_image", "achieved_gflop_per_s", "peak_memory_mb",
                "memory_kind", "routing", "routing_iters", "speed_plan"]
    frame = frame.astype(object).where(frame.notna(), "")
    parts = [
        f"# Throughput: {stem}",
        "",
        "Images/s are the median over the timed runs (after warm-up) of batch / step time; "
        "spread_iqr_pct is the interquartile range of the step times as a percentage of the median. "
        "A train step is forward, loss, backward and an Adam step; infer is a forward pass under "
        "torch.inference_mode. flops_per_image counts FLOPs (2 per multiply-add) of matrix products "
        "and convolutions with torch.utils.flop_counter, as direct convolutions (the network's nominal "
        "FLOPs; CapsNet's DFT path for PrimaryCaps needs about a third of them), so achieved_gflop_per_s "
        "is nominal FLOPs per second; peak memory is the CUDA allocator's maximum "
        "on GPUs and the process's peak resident set size on the CPU. Written by `python -m bench`.",
        "",
        "## Environment",
        "",
        _markdown(frame.head(1), env_columns),
        "",
        "## Models",
        "",
        _markdown(frame[frame["section"] == "models"], measured),
        "",
        "## Speed paths",
        "",
        "The hand-written CPU paths each model ran (models/speed_paths.py) and why: each is chosen on this "
        "machine by a short paired measurement against its plain twin on the step it speeds up (the "
        "factor is the median over rounds of plain time / its time) and runs only from 1.3x; a choice is "
        "measured once per CPU model, threads, dtype and shape and reused, as training reuses it.",
        "",
        _markdown(frame[(frame["section"] == "models") & (frame["mode"] == "train")],
                  ["model", "batch", "speed_plan", "speed_plan_why"]),
        "",
        "## Roofline",
        "",
        "The device's peaks are measured in this run in the step's dtype: a large square matrix product "
        "(peak_gflop_per_s; its side in bench/roofline.py, smaller in the smoke profile) and a large copy "
        "(peak_copy_gb_per_s, bytes read + written). bytes_per_image sums "
        "the bytes every operator of the step reads and writes (views aside), as if nothing stayed in cache "
        "between operators: an upper estimate of memory traffic. The bound is min(peak, flop_per_byte x "
        "bandwidth); roofline_fraction is achieved_gflop_per_s over it. The bytes are an upper estimate and "
        "the FLOPs nominal (CapsNet's DFT convolution does about a third of them), so the memory roof is low "
        "and a fraction can read high, even above 1.",
        "",
        _markdown(frame[frame["section"] == "models"], ["model", "batch", "mode", *ROOFLINE]),
    ]
    routing = frame[frame["section"] == "routing"]
    if len(routing):
        parts += [
            "",
            "## Routing: our CapsNet against references (c) and (a) and the convolution stem (b)",
            "",
            "Reference (c) is CapsNet as a careful engineer writes it with plain autograd (the fair "
            "comparison): nn.Conv2d for PrimaryCaps, u_hat by one einsum over the shared W, routing in a few "
            "tensor ops per iteration, autograd's backward. Reference (a) materialises u_hat with expand + "
            "matmul on broadcast 5-D tensors as common "
            "public versions do; reference (b) is Conv1 + the PrimaryCaps layer alone (the floor), computed "
            "as our model computes it. In training, `capsnet_conv2d` and `reference_b_stem_conv2d` are the "
            "same two with nn.Conv2d for PrimaryCaps (the routing's gain alone; their time_vs_stem is "
            "against the nn.Conv2d stem). All have the same batch, and all but the stems our CapsNet's weights; "
            "each runs in a process of its own, as in training, warmed up until its resident memory stops "
            "growing (warmup_runs steps in that mode, within a time cap), then all are timed in turn, one step "
            "each per round (the second of two in a row), each model next to its stem; in training, more "
            "rounds without reference (a) follow for the ratios to the stem and to reference (c) (runs says "
            "how many rounds a row had). speedup_vs_reference_c, speedup_vs_reference_a and time_vs_stem are "
            "medians over the rounds of the ratio within a round, so load that comes and goes divides out.",
            "",
            _markdown(routing, ["model", "batch", "mode", "images_per_s", "spread_iqr_pct", "step_ms", "runs",
                                "warmup_runs",
                                "speedup_vs_reference_c", "speedup_vs_reference_a", "time_vs_stem", "params",
                                "flops_per_image",
                                "achieved_gflop_per_s", "routing_iters"]),
        ]
    data = frame[frame["section"] == "data"]
    if len(data):
        parts += ["", "## Data preparation", "",
                  _markdown(data, ["model", "batch", "step_ms", "runs", "share_of_step_pct"])]
    summary = summary_lines(rows)
    if summary:
        parts += ["", "## Summary", ""] + summary
    md_path = out / f"{stem}.md"
    write_text_atomically(md_path, "\n".join(parts) + "\n")
    return [csv_path, md_path]
