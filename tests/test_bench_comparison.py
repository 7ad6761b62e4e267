"""The routing comparison's worker processes and their warm-up rule (bench/comparison.py)."""
import mmap
import time

import pytest
import torch

from bench import comparison
from bench.comparison import COMPARED, REFERENCE_A, REFERENCE_C, Lockstep, build_compared, settle
from bench.options import BenchOptions

CPU = torch.device("cpu")


def _options(**changes):
    return BenchOptions(profile="smoke", models=("capsnet",), batch_sizes=(2,), device="cpu", threads=1, **changes)


class _GrowingStep:
    """A step whose process grows by 1 MB per call for `grow_for` calls, then stays: the resident
    size settle() reads is scripted (a real test process's size also moves with what other tests
    freed), and the reading itself is checked on its own below."""

    def __init__(self, grow_for: int):
        self.grow_for, self.calls = grow_for, 0

    def __call__(self):
        self.calls += 1

    def resident_bytes(self) -> int:
        return (100 + min(self.calls, self.grow_for)) << 20


@pytest.fixture
def growing(monkeypatch):
    def make(grow_for: int) -> _GrowingStep:
        step = _GrowingStep(grow_for)
        monkeypatch.setattr(comparison, "_resident_bytes", step.resident_bytes)
        return step
    return make


def test_settle_waits_until_memory_stops_growing(growing):
    steps = settle(growing(6), CPU, min_seconds=0.0, max_seconds=60.0, max_steps=100, quiet_steps=4)
    assert steps == (6 + 4, True)  # six growing steps, then four quiet ones


def test_the_resident_size_grows_with_touched_memory():
    # A fresh anonymous mapping: memory from the allocator may be pages the process already holds.
    block = mmap.mmap(-1, 64 << 20)
    before = comparison._resident_bytes()
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    assert comparison._resident_bytes() - before >= 48 << 20
    block.close()


def test_settle_keeps_going_for_the_minimum_time_and_stops_at_the_caps(growing):
    started = time.perf_counter()
    steps, settled = settle(lambda: time.sleep(0.01), CPU, min_seconds=0.3, max_seconds=60.0, max_steps=1000)
    assert time.perf_counter() - started >= 0.3 and steps >= 20 and settled
    assert settle(growing(50), CPU, min_seconds=0.0, max_seconds=60.0, max_steps=7) == (7, False)
    steps, settled = settle(lambda: time.sleep(0.05), CPU, min_seconds=100.0, max_seconds=0.2, max_steps=1000)
    assert steps <= 6 and not settled


def test_every_worker_builds_the_same_weights():
    ours, again = build_compared("capsnet", _options()), build_compared("capsnet", _options())
    for a, b in zip(ours.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    reference = build_compared(REFERENCE_A, _options())
    assert torch.equal(reference.conv1.weight, ours.conv1.weight)
    plain = build_compared(REFERENCE_C, _options())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ours.state_dict().values()))
    with pytest.raises(ValueError, match="unknown compared model 'resnet'"):
        build_compared("resnet", _options())


@pytest.mark.e2e  # worker processes that build and time the models
def test_lockstep_times_each_model_in_its_own_process():
    names = COMPARED[:2]
    with Lockstep(names, _options(), batch=2) as workers:
        pids = {workers.workers[name][0].pid for name in names}
        assert len(pids) == 2
        settled = workers.settle(names, "train", 0.0, 5.0, 2)
        assert {name: steps for name, (steps, _) in settled.items()} == dict.fromkeys(names, 2)
        timings = workers.time_rounds(names, "train", 3)
        assert all(len(timings[name].times) == 3 and min(timings[name].times) > 0 for name in names)
        described = workers.ask(names[0], "describe", "train")
        assert described["params"] == 8_215_568 and described["routing_iters"] == 3
    assert all(not process.is_alive() for process, _ in workers.workers.values())


@pytest.mark.e2e  # worker processes, as above
def test_a_failing_worker_is_an_error_naming_it_not_a_hang():
    with pytest.raises(RuntimeError, match="worker for resnet failed"):
        Lockstep(("capsnet", "resnet"), _options(), batch=2)
