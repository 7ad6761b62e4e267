"""Routing under torch.compile (models/routing.py): where the CPU's C++ kernels are not in play
(CUDA, or CAPSBENCH_CPU_KERNELS=0), a compiled step traces the plain-ops routing, which must be the
same function as the hand-scheduled one, and CapsNet's forward + loss compiles as one graph."""
import pytest
import torch
import torch._dynamo

import models
from models.cpu import kernels as cpu_kernels
from models.routing import route_with_autograd, votes_and_route


def _inputs(batch=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, 1152, 8, generator=generator)
    # A large W moves the couplings far from uniform, so every term of the gradient matters.
    weight = torch.randn(1152, 10, 8, 16, generator=generator)
    return u, weight


def _assert_close(a, b, what, rtol=2e-5):
    error = (a - b).abs().max() / b.abs().max().clamp_min(1e-12)
    assert error < rtol, f"{what}: max |diff| / max |ref| = {error:.2e}"


@pytest.mark.parametrize("iters, detach_inner", [(1, False), (2, False), (3, False), (3, True)])
def test_the_plain_routing_is_the_hand_scheduled_one_in_outputs_couplings_and_gradients(iters, detach_inner):
    results = []
    for route in (route_with_autograd, votes_and_route):
        u, weight = (t.clone().requires_grad_(True) for t in _inputs())
        couplings: list[torch.Tensor] = []
        v = route(u, weight, iters, detach_inner, couplings)
        # A loss that weighs every output component differently.
        (v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum().backward()
        results.append((v.detach(), couplings, u.grad, weight.grad))
    (v_plain, c_plain, gu_plain, gw_plain), (v_ours, c_ours, gu_ours, gw_ours) = results
    _assert_close(v_plain, v_ours, "v")
    assert len(c_plain) == len(c_ours) == iters
    for ours, plain in zip(c_ours, c_plain):
        _assert_close(plain, ours, "couplings")
    _assert_close(gu_plain, gu_ours, "grad u")
    _assert_close(gw_plain, gw_ours, "grad W")


@pytest.fixture
def no_cpu_kernels(monkeypatch):
    """As CAPSBENCH_CPU_KERNELS=0: the plain-ops paths everywhere."""
    monkeypatch.setattr(cpu_kernels, "module", lambda: None)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step(model):
    def forward_and_loss(images, labels):
        output = model(images, labels)
        return output.scores, model.loss(output, images, labels).total

    return forward_and_loss


def test_capsnets_forward_and_loss_compile_without_a_graph_break(no_cpu_kernels):
    torch.manual_seed(0)
    model = models.create("capsnet")
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    explained = torch._dynamo.explain(_step(model))(images, labels)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_one_in_outputs_and_gradients(no_cpu_kernels):
    """Inductor on the CPU (a small CapsNet keeps its build short): the compiled forward + loss,
    which routes with the plain ops, against the eager hand-scheduled step."""
    torch.manual_seed(0)
    model = models.create("capsnet", conv1_channels=16, primary_types=4, routing_iters=3)
    with torch.no_grad():
        model.digits.weight.mul_(30.0)
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    results = []
    for step in (_step(model), torch.compile(_step(model), backend="inductor", dynamic=False)):
        model.zero_grad(set_to_none=True)
        scores, loss = step(images, labels)
        loss.backward()
        results.append((scores.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (scores, loss, grads), (c_scores, c_loss, c_grads) = results
    _assert_close(c_scores, scores, "scores", rtol=1e-4)
    _assert_close(c_loss, loss, "loss", rtol=1e-4)
    for name, grad in grads.items():
        _assert_close(c_grads[name], grad, f"grad {name}", rtol=1e-3)
