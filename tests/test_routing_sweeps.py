"""The C++ routing sweeps (models/cpu/csrc/routing_sweeps.h) against the PyTorch ops they replace.

The kernel is a real component of the CPU training step: where it cannot be built these tests
skip locally but fail in CI (the `kernel` fixture of conftest.py).
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

from models import routing_sweeps
from models.capsnet import CapsNet, CapsNetConfig, DigitCaps
from models.cpu import kernels as cpu_kernels
from models.routing_sweeps import VotesGrad, backward_sweep, forward_sweep, torch_sweeps, votes_and_sum

# odd sizes: no accidental alignment; the batch at least MIN_KERNEL_BATCH, so the kernels run
CHILDREN, DIM, PARENTS, BATCH = 37, 5, 3, 17
WIDTH = PARENTS * BATCH


def _sweeps(use_torch: bool):
    return torch_sweeps() if use_torch else contextlib.nullcontext()


def _random(*shape, generator):
    return torch.randn(*shape, generator=generator)


def test_forward_sweep_matches_torch_ops(kernel):
    gen = torch.Generator().manual_seed(0)
    votes, v = _random(CHILDREN, DIM, WIDTH, generator=gen), _random(DIM, WIDTH, generator=gen)
    logits = _random(CHILDREN, PARENTS, BATCH, generator=gen)
    results = []
    for use_torch in (False, True):
        these_logits, coupling = logits.clone(), torch.empty_like(logits)
        with _sweeps(use_torch):
            s = forward_sweep(votes, v, these_logits, coupling, PARENTS)
        results.append((s, these_logits, coupling))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # the couplings are a softmax over the parents
    torch.testing.assert_close(results[0][2].sum(1), torch.ones(CHILDREN, BATCH))


def test_forward_sweep_softmax_holds_for_extreme_logits(kernel):
    """The kernel's own exp: logits far apart (exp underflows below -87) and equal."""
    logits = torch.tensor([[0.0, -50.0, -100.0], [3.0, 3.0, 3.0], [-1e4, 0.0, 20.0]]).view(3, 3, 1)
    logits = logits.repeat(1, 1, 16)  # batch 16
    votes = torch.zeros(3, 1, 3 * 16)  # no agreement: the softmax of the logits as they are
    coupling = torch.empty_like(logits)
    forward_sweep(votes, torch.zeros(1, 3 * 16), logits.clone(), coupling, 3)
    torch.testing.assert_close(coupling, torch.softmax(logits.double(), dim=1).float(), rtol=3e-7, atol=1e-30)
    # below e^-87 a coupling is 0, not a subnormal
    assert (coupling[0, 2] == 0).all() and (coupling[2, 0] == 0).all()


def test_votes_and_sum_match_torch_ops(kernel):
    gen = torch.Generator().manual_seed(4)
    weight_t, u_t = _random(CHILDREN, 11, 6, generator=gen), _random(CHILDREN, 6, 70, generator=gen)  # batch > 64
    results = []
    for use_torch in (False, True):
        votes = torch.full((CHILDREN, 11, 70), float("nan"))
        with _sweeps(use_torch):
            total = votes_and_sum(weight_t, u_t, votes)
        results.append((votes, total))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][0], torch.bmm(weight_t, u_t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], torch.bmm(weight_t, u_t).sum(0), rtol=1e-5, atol=1e-5)


def test_backward_sweep_matches_torch_ops(kernel):
    gen = torch.Generator().manual_seed(1)
    votes, grad_s = _random(CHILDREN, DIM, WIDTH, generator=gen), _random(DIM, WIDTH, generator=gen)
    coupling = torch.softmax(_random(CHILDREN, PARENTS, BATCH, generator=gen), dim=1)
    grad_logits = _random(CHILDREN, PARENTS, BATCH, generator=gen)
    results = []
    for use_torch in (False, True):
        these = grad_logits.clone()
        with _sweeps(use_torch):
            grad_v = backward_sweep(votes, coupling, grad_s, these, PARENTS)
        results.append((grad_v, these))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_votes_grad_rows_match_the_dense_sum_of_factors(kernel):
    gen = torch.Generator().manual_seed(2)
    factors = [(_random(CHILDREN, PARENTS, BATCH, generator=gen), _random(DIM, WIDTH, generator=gen)) for _ in range(3)]
    factors.append((0.25, _random(DIM, WIDTH, generator=gen)))
    dense = sum(
        (f * g if isinstance(f, float) else f.view(CHILDREN, 1, WIDTH) * g) for f, g in factors
    ).expand(CHILDREN, DIM, WIDTH)
    votes_grad = VotesGrad(factors)
    part = slice(5, 30)
    for use_torch in (False, True):
        out = torch.full((part.stop - part.start, DIM, WIDTH), float("nan"))
        with _sweeps(use_torch):
            votes_grad.rows(part, out)
        torch.testing.assert_close(out, dense[part], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("iters, block_bytes", [(1, None), (2, None), (3, None), (3, 5000)])
def test_digit_capsules_give_the_same_outputs_and_gradients_either_way(kernel, iters, block_bytes, monkeypatch):
    if block_bytes is not None:  # many blocks, the last one shorter: the backward's reused buffer
        monkeypatch.setattr(routing_sweeps, "_BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    layer = DigitCaps(CapsNetConfig(routing_iters=iters))
    u = torch.randn(BATCH, layer.weight.shape[0], layer.weight.shape[2]).mul_(0.5)
    grad_v = torch.randn(BATCH, layer.weight.shape[1], layer.weight.shape[3])
    results = []
    for use_torch in (False, True):
        layer.zero_grad()
        inputs = u.clone().requires_grad_(True)
        couplings = []
        with _sweeps(use_torch):
            v = layer(inputs, couplings)
            (v * grad_v).sum().backward()
        results.append([v.detach(), inputs.grad, layer.weight.grad.clone(), *couplings])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_only_float32_on_the_cpu_uses_the_kernel(kernel):
    batch = routing_sweeps.MIN_KERNEL_BATCH
    votes = torch.randn(4, 3, 2 * batch)
    assert cpu_kernels.version("cpu") == "cpp" and routing_sweeps._use_kernel(votes, batch)
    with torch_sweeps():
        assert not routing_sweeps._use_kernel(votes, batch)
    assert not routing_sweeps._use_kernel(votes.double(), batch)  # float64 runs the PyTorch ops
    assert not routing_sweeps._use_kernel(votes, batch - 1)  # small batches too: there they are slower


def test_sweeps_give_bit_identical_results_at_any_thread_count(kernel):
    """Partial sums over fixed chunks of children, added in chunk order: neither the thread count
    (which moves parallel_for's boundaries) nor the order threads finish in changes a bit. 1155
    children: 36 full chunks and a short one."""
    gen = torch.Generator().manual_seed(3)
    children = 1155
    votes, v = _random(children, 16, 10 * BATCH, generator=gen), _random(16, 10 * BATCH, generator=gen)
    weight_t, u_t = _random(children, 16, 8, generator=gen), _random(children, 8, BATCH, generator=gen)
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2, 4, 4, 4, 3):  # 4 threads, more than this machine's cores, three times
            torch.set_num_threads(count)
            logits, coupling = torch.zeros(children, 10, BATCH), torch.empty(children, 10, BATCH)
            s = forward_sweep(votes, v, logits, coupling, 10)
            grad_v = backward_sweep(votes, coupling, v, torch.zeros_like(logits), 10)
            total = votes_and_sum(weight_t, u_t, torch.empty(children, 16, BATCH))
            outputs = (s, logits, coupling, grad_v, total)
            results.setdefault(tuple(t.numpy().tobytes() for t in outputs), []).append(count)
    finally:
        torch.set_num_threads(threads)
    assert len(results) == 1, f"thread counts with different bits: {list(results.values())}"
    # and the sums are sums: against float64 in one pass
    expected = torch.bmm(weight_t.double(), u_t.double()).sum(0)
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-4)


def test_a_failed_build_warns_once_and_routing_still_runs(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension\ng++: error: no such compiler\nninja: build stopped")

    monkeypatch.delenv(cpu_kernels.ENV_SWITCH, raising=False)
    monkeypatch.setattr(cpu_kernels, "_build", no_compiler)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_error", None)
    with pytest.warns(UserWarning, match="no such compiler.*run on PyTorch ops") as caught:
        assert cpu_kernels.module() is None
        assert cpu_kernels.module() is None
    assert len(caught) == 1
    assert cpu_kernels.version("cpu") == "torch"
    assert cpu_kernels.error() == "RuntimeError: g++: error: no such compiler"
    model = CapsNet(CapsNetConfig(primary_conv="dft"))  # routing and the DFT layouts on PyTorch ops
    model(torch.rand(2, 1, 28, 28)).scores.sum().backward()
    assert model.primary.conv.weight.grad is not None


def test_the_environment_switch_turns_the_kernel_off():
    code = "from models.cpu import kernels as cpu_kernels; print(cpu_kernels.version('cpu'), cpu_kernels.error())"
    env = dict(os.environ, CAPSBENCH_CPU_KERNELS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torch", "CAPSBENCH_CPU_KERNELS=0"]
