"""The throughput benchmark on the CPU with tiny sizes (the smoke profile)."""
import json

import pandas as pd
import pytest
import torch

import models
from bench.options import BenchOptions
from bench.benchmark import COLUMNS, run_benchmark, table_stem, write_tables
from studies.engine.throughput import machine_slug
from studies.training.devices import cpu_bf16_isa, cpu_model

REQUIRED = [
    "model", "batch", "mode", "images_per_s", "spread_iqr_pct", "step_ms", "params", "flops_per_image",
    "achieved_gflop_per_s", "peak_memory_mb", "device", "device_name", "torch", "threads", "compile", "dtype",
]


@pytest.fixture(scope="module")
def smoke_rows():
    options = BenchOptions(profile="smoke", models=("capsnet", "cnn_pool"), batch_sizes=(2,), device="cpu", threads=1,
                           routings=("self_attention",))
    return run_benchmark(options)


def test_the_benchmark_leaves_the_callers_thread_count_alone():
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_benchmark(BenchOptions(profile="smoke", models=("cnn_pool",), batch_sizes=(1,), device="cpu",
                                   threads=1, references=False))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)


@pytest.mark.e2e  # smoke_rows: the whole benchmark, run in this process
def test_rows_cover_every_model_batch_and_mode(smoke_rows):
    measured = {(r["model"], r["batch"], r["mode"]) for r in smoke_rows if r["section"] == "models"}
    assert measured == {(m, 2, mode) for m in ("capsnet", "capsnet/self_attention", "cnn_pool")
                        for mode in ("train", "infer")}
    for row in smoke_rows:
        assert list(row) == COLUMNS
        assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["threads"] == 1
        assert row["device"] == "cpu" and row["dtype"] == "fp32" and row["compile"] is False
    capsnet = next(r for r in smoke_rows if r["model"] == "capsnet" and r["mode"] == "train")
    assert capsnet["params"] == 8_215_568 and capsnet["routing_iters"] == 3
    # About 1.2 GFLOP per training image; inference is the forward third.
    assert 1.1e9 < capsnet["flops_per_image"] < 1.3e9
    assert capsnet["peak_memory_mb"] > 0 and capsnet["memory_kind"].startswith("process")
    assert capsnet["achieved_gflop_per_s"] == pytest.approx(capsnet["flops_per_image"] * capsnet["images_per_s"] / 1e9)
    # The roofline: the device's measured peaks, the step's bytes, the bound and the fraction reached
    assert capsnet["peak_gflop_per_s"] > 0 and capsnet["peak_copy_gb_per_s"] > 0
    assert capsnet["bytes_per_image"] > 0 and capsnet["bound"] in ("compute", "memory")
    assert capsnet["flop_per_byte"] == pytest.approx(capsnet["flops_per_image"] / capsnet["bytes_per_image"])
    assert capsnet["roofline_fraction"] == pytest.approx(capsnet["achieved_gflop_per_s"]
                                                         / capsnet["attainable_gflop_per_s"])
    # Which speed paths each model ran, and why
    assert capsnet["speed_plan"].startswith("routing ") and "PrimaryCaps" in capsnet["speed_plan"]
    assert "against the plain twin" in capsnet["speed_plan_why"]
    other_routing = next(r for r in smoke_rows if r["model"] == "capsnet/self_attention" and r["mode"] == "train")
    assert other_routing["routing"] == "self_attention" and other_routing["speed_plan"].startswith("PrimaryCaps")
    cnn = next(r for r in smoke_rows if r["model"] == "cnn_pool" and r["mode"] == "train")
    assert cnn["speed_plan_why"] == "no hand-written CPU path in this model"


def test_the_roofline_of_a_hand_worked_row():
    from bench.roofline import BytesMoved, Peaks, columns

    # 100 FLOPs and 50 bytes an image: 2 FLOP/byte; at 4 GB/s memory allows 8 GFLOP/s, below the 10 of
    # the matrix product, so the step is memory-bound; 4e7 images/s reach 4 GFLOP/s, half the bound.
    row = columns({"flops_per_image": 100, "bytes_per_image": 50, "images_per_s": 4e7}, Peaks(10.0, 4.0))
    assert row["bound"] == "memory" and row["attainable_gflop_per_s"] == 8.0 and row["roofline_fraction"] == 0.5
    compute_bound = columns({"flops_per_image": 100, "bytes_per_image": 1, "images_per_s": 1e7}, Peaks(10.0, 4.0))
    assert compute_bound["bound"] == "compute"
    a, b = torch.ones(1000), torch.ones(1000)
    with BytesMoved() as moved:
        (a + b).view(10, 100)  # the add reads 2 x 4000 bytes and writes 4000; the view moves nothing
    assert moved.total == 12_000


@pytest.mark.e2e
def test_routing_comparison_and_data_rows(smoke_rows):
    routing = {(r["model"], r["mode"]): r for r in smoke_rows if r["section"] == "routing"}
    assert set(routing) == {
        (m, mode) for m in ("capsnet", "reference_c_plain", "reference_a_broadcast", "reference_b_stem")
        for mode in ("train", "infer")
    } | {("capsnet_conv2d", "train"), ("reference_b_stem_conv2d", "train")}
    # smoke: 2 rounds of all, then 1 more without reference (a) in training; 2-step warm-ups
    assert routing[("capsnet", "train")]["runs"] == 3 and routing[("reference_a_broadcast", "train")]["runs"] == 2
    assert routing[("reference_c_plain", "train")]["runs"] == 3 and routing[("capsnet", "infer")]["runs"] == 2
    assert all(row["warmup_runs"] == 2 for row in routing.values())
    assert routing[("reference_a_broadcast", "train")]["speedup_vs_reference_a"] == pytest.approx(1.0)
    assert routing[("reference_c_plain", "train")]["speedup_vs_reference_c"] == pytest.approx(1.0)
    assert all(row["speedup_vs_reference_c"] > 0 for row in routing.values())
    assert routing[("reference_b_stem", "train")]["time_vs_stem"] == pytest.approx(1.0)
    # Same network, same products: reference (a) and ours count the same FLOPs (ours with the
    # routing on PyTorch ops, where the counter sees the vote product).
    ours, ref = routing[("capsnet", "train")], routing[("reference_a_broadcast", "train")]
    assert ours["flops_per_image"] == ref["flops_per_image"]
    # Reference (c) also does its routing sums as matrix products, which the counter sees: per image,
    # 3 weighted sums and 2 agreements forward, 9 of their gradients backward (the first coupling is
    # constant), each 10 x 1152 x 16 multiply-adds.
    plain = routing[("reference_c_plain", "train")]
    assert plain["flops_per_image"] - ours["flops_per_image"] == 14 * 2 * 10 * 1152 * 16
    data = [r for r in smoke_rows if r["section"] == "data"]
    assert len(data) == 1 and data[0]["share_of_step_pct"] > 0


@pytest.mark.e2e
def test_tables_have_every_required_column(smoke_rows, tmp_path):
    paths = write_tables(smoke_rows, tmp_path / "smoke")
    assert [p.name for p in paths] == ["throughput-cpu-fp32.csv", "throughput-cpu-fp32.md"]
    frame = pd.read_csv(paths[0])
    assert list(frame.columns) == COLUMNS and len(frame) == len(smoke_rows)
    markdown = paths[1].read_text()
    for column in REQUIRED + ["speedup_vs_reference_c", "speedup_vs_reference_a", "time_vs_stem", "share_of_step_pct"]:
        assert column in markdown, column
    assert "faster" in markdown and "stem" in markdown
    # the summary quotes the fair reference first
    summary = markdown.split("## Summary")[1]
    assert summary.index("reference (c)") < summary.index("reference (a)")


@pytest.mark.e2e
def test_table_name_says_dtype_and_compile(smoke_rows):
    compiled = [dict(r, compile=True, dtype="bf16", device="cuda") for r in smoke_rows]
    assert table_stem(compiled) == "throughput-cuda-bf16-compiled"


@pytest.mark.e2e
def test_command_line_json_and_tables(tmp_path, run_process):
    done = run_process("bench", "--profile", "smoke", "--models", "cnn_pool", "--batch-sizes", "2", "--device", "cpu",
                     "--no-references", "--json", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {(r["model"], r["mode"]) for r in rows} == {("cnn_pool", "train"), ("cnn_pool", "infer")}
    assert (tmp_path / "throughput-cpu-fp32.csv").exists() and (tmp_path / "throughput-cpu-fp32.md").exists()


def test_default_output_directory_is_results_profile(tmp_path, run_cli):
    # Same place as the studies' results: $CAPSBENCH_RESULTS/<profile> (default: results/ in the repo).
    done = run_cli("bench", "--profile", "smoke", "--models", "cnn_pool", "--batch-sizes", "1", "--device", "cpu",
                   "--no-references", env={"CAPSBENCH_RESULTS": tmp_path / "results"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "smoke" / "throughput-cpu-fp32.md").exists()
    assert "| cnn_pool" in done.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--models", "resnet"], "unknown model 'resnet'; valid models: " + ", ".join(models.names())),
        (["--batch-sizes", "0"], "--batch-sizes: batch_sizes[0]: input should be greater than or equal to 1"),
        (["--batch-sizes", "8,x"], "--batch-sizes: batch_sizes[1]: input should be a valid integer"),
        (["--profile", "huge"], "--profile: profile: input should be 'smoke', 'quick', 'standard' or 'paper'"),
        (["--routing-iters", "0"], "--routing-iters: routing_iters: input should be greater than or equal to 1"),
        (["--threads", "0"], "--threads: threads: input should be greater than or equal to 1"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args, fragment, tmp_path, run_cli):
    done = run_cli("bench", *args, "--out", tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_bf16_is_refused_on_a_cpu_without_bf16_matrix_units(tmp_path, run_cli, monkeypatch):
    from studies.training import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    done = run_cli("bench", "--bf16", "--device", "cpu", "--out", tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CPU with AMX or AVX512-BF16" in lines[0], done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.e2e
def test_bf16_on_a_cpu_with_bf16_matrix_units(tmp_path, run_cli, monkeypatch):
    from studies.training import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"amx_bf16", "avx512_bf16"}))
    done = run_cli("bench", "--profile", "smoke", "--models", "cnn_pool", "--batch-sizes", "2", "--device", "cpu",
                   "--bf16", "--no-references", "--json", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {row["dtype"] for row in rows} == {"bf16"} and {row["cpu_bf16_isa"] for row in rows} == {"amx_bf16"}
    assert (tmp_path / "throughput-cpu-bf16.md").exists()


@pytest.mark.e2e
def test_bf16_and_compile_together_on_the_cpu(tmp_path, run_cli, monkeypatch):
    from studies.training import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    done = run_cli("bench", "--profile", "smoke", "--models", "cnn_pool", "--batch-sizes", "2", "--device", "cpu",
                   "--bf16", "--compile", "--no-references", "--json", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {(row["dtype"], row["compile"]) for row in rows} == {("bf16", True)}
    assert all(row["images_per_s"] > 0 for row in rows)
    assert (tmp_path / "throughput-cpu-bf16-compiled.md").exists()


def test_speed_paths_factor_is_the_paired_ratio_of_plain_to_fast():
    import time

    from studies.training.speed_choice import interleave, paired_factors

    calls = []

    def sleeper(name, seconds):
        def step():
            calls.append(name)
            time.sleep(seconds)

        return step

    times = interleave({"fast": sleeper("fast", 0.002), "plain": sleeper("plain", 0.006)}, rounds=4)
    assert len(times["fast"]) == len(times["plain"]) == 4
    assert 2.0 < paired_factors(times, "plain")["fast"] < 4.5  # 3x, give or take the sleeps' overshoot
    # two calls each per round (one untimed, one timed), the order rotated every round
    assert calls[:8] == ["fast", "fast", "plain", "plain", "plain", "plain", "fast", "fast"]


def test_speed_paths_command_line(capsys):
    from bench.speed_paths import main

    assert main(["--paths", "routing_kernels,routing_sweeps,dft_conv", "--batch", "2", "--rounds", "1",
                 "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "| routing_kernels |" in table and "| routing_sweeps |" in table and "| dft_conv |" in table
    assert main(["--paths", "workspace"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown speed path 'workspace'")


@pytest.mark.e2e
def test_the_throughput_study_measures_each_dtype_once_and_the_report_embeds_it(tmp_path, run_cli):
    env = {"CAPSBENCH_RESULTS": tmp_path / "results"}
    out = tmp_path / "results" / "smoke"
    # A table another CPU measured (committed with the results, say) is not this machine's
    out.mkdir(parents=True)
    elsewhere = out / "throughput-cpu-another-cpu-fp32.csv"
    elsewhere.write_text("device,device_name,dtype\ncpu,Another CPU,fp32\n")
    elsewhere.with_suffix(".md").write_text("# Throughput: measured elsewhere\n")
    done = run_cli("studies", "run", "--study", "throughput", "--profile", "smoke", "--device", "cpu",
                   "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    dtypes = ["fp32"] + (["bf16"] if cpu_bf16_isa() is not None else [])
    report = (out / "REPORT.md").read_text()
    here = machine_slug(cpu_model())
    for dtype in dtypes:
        table = pd.read_csv(out / f"throughput-cpu-{here}-{dtype}.csv")
        assert set(table["device_name"]) == {cpu_model()}
        assert f"Throughput (cpu, {cpu_model()}, {dtype})" in report
    assert elsewhere.read_text() == "device,device_name,dtype\ncpu,Another CPU,fp32\n"  # kept as it was
    assert "Throughput (cpu, Another CPU, fp32)" in report  # shown as what it is
    again = run_cli("studies", "run", "--study", "throughput", "--profile", "smoke", "--device", "cpu",
                    "--no-progress", env=env)
    assert again.returncode == 0 and again.stdout.count("exists; delete it to measure again") == len(dtypes)
