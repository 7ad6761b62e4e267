"""Our CapsNet against references (a) and (c) of bench/references.py: same weights, same numbers.

Reference (a) is the straightforward broadcast implementation of the paper's routing, (c) the
plain autograd one (one einsum for the votes, a few tensor ops per routing iteration); our
model computes votes and routing in another layout with a hand-written backward, so these
tests pin that the speed-ups change nothing but the speed.
"""
import pytest
import torch

import models
from bench.references import BroadcastCapsNet, PlainCapsNet
from tests.reference_routing import dynamic_routing


def _pair(**options):
    torch.manual_seed(0)
    ours = models.create("capsnet", **options)
    # A W 100x the 0.01-std init makes routing move the couplings far from uniform (by
    # up to ~0.25), so the test exercises every term of the routing gradient.
    with torch.no_grad():
        ours.digits.weight.mul_(100.0)
    reference = BroadcastCapsNet(ours.config).copy_from(ours)
    return ours, reference


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_close(a, b, what, rtol=1e-4):
    scale = b.abs().max().clamp_min(1e-12)
    error = (a - b).abs().max() / scale
    assert error < rtol, f"{what}: max |diff| / max |ref| = {error:.2e}"


@pytest.mark.parametrize("iters", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_outputs_and_gradients_match_the_broadcast_reference(iters, train):
    ours, reference = _pair(routing_iters=iters)
    ours.train(train)
    reference.train(train)
    torch.manual_seed(1)
    images = torch.rand(5, 1, 28, 28)
    labels = torch.randint(0, 10, (5,))
    out, ref = ours(images, labels), reference(images, labels)
    _assert_close(out.scores, ref.scores, "scores")
    _assert_close(out.reconstruction, ref.reconstruction, "reconstruction")
    ours.loss(out, images, labels).total.backward()
    reference.loss(ref, images, labels).total.backward()
    grads, ref_grads = _grads(ours), _grads(reference)
    _assert_close(grads["digits.weight"], ref_grads["W"].squeeze(0).transpose(-1, -2), "grad W")
    _assert_close(grads["conv1.weight"], ref_grads["conv1.weight"], "grad conv1")
    _assert_close(grads["primary.conv.weight"], ref_grads["primary_conv.weight"], "grad primary conv")
    _assert_close(grads["primary.conv.bias"], ref_grads["primary_conv.bias"], "grad primary bias")
    for name in ("0", "2", "4"):
        _assert_close(grads[f"decoder.net.{name}.weight"], ref_grads[f"decoder.net.{name}.weight"], "grad decoder")


@pytest.mark.parametrize("iters, detach_inner, train", [(1, False, True), (3, False, True), (3, True, True),
                                                    (3, False, False)])
def test_outputs_and_gradients_match_the_plain_autograd_reference(iters, detach_inner, train):
    """Reference (c) loads our state dict as it is. Both compute in float32, in different orders
    (measured: relative differences up to 2.3e-6), hence 2e-5."""
    ours, _ = _pair(routing_iters=iters, detach_inner=detach_inner)
    plain = PlainCapsNet(ours.config).copy_from(ours)
    assert plain.state_dict().keys() == ours.state_dict().keys()
    ours.train(train)
    plain.train(train)
    torch.manual_seed(1)
    images, labels = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))
    out, ref = ours(images, labels), plain(images, labels)
    _assert_close(out.scores, ref.scores, "scores", rtol=2e-5)
    _assert_close(out.reconstruction, ref.reconstruction, "reconstruction", rtol=2e-5)
    ours.loss(out, images, labels).total.backward()
    plain.loss(ref, images, labels).total.backward()
    ref_grads = _grads(plain)
    for name, grad in _grads(ours).items():
        _assert_close(grad, ref_grads[name], f"grad {name}", rtol=2e-5)


def test_couplings_really_move_in_the_equivalence_setting():
    ours, _ = _pair(routing_iters=3)
    couplings: list[torch.Tensor] = []
    ours.capsules(torch.rand(2, 1, 28, 28), couplings)
    assert (couplings[-1] - 0.1).abs().max() > 0.1  # routing is not a no-op here


def _plain_routing(votes, iters, detach_inner):
    """The paper's Procedure 1 written with autograd ops, for the public dynamic_routing."""
    inner = votes.detach() if detach_inner else votes
    logits = torch.zeros(votes.shape[:3])
    for iteration in range(iters):
        last = iteration == iters - 1
        c = logits.softmax(dim=-1)
        s = (c.unsqueeze(-1) * (votes if last else inner)).sum(1)
        n2 = s.pow(2).sum(-1, keepdim=True)
        v = s * n2 / (1 + n2) / torch.sqrt(n2 + 1e-8)
        if not last:
            logits = logits + (inner * v.unsqueeze(1)).sum(-1)
    return v


@pytest.mark.parametrize("iters", [1, 3, 4])
@pytest.mark.parametrize("detach_inner", [False, True])
def test_dynamic_routing_on_given_votes_matches_autograd(iters, detach_inner):
    torch.manual_seed(2)
    base = torch.randn(3, 40, 10, 16)
    weight = torch.randn(3, 10, 16)
    votes = base.clone().requires_grad_(True)
    (dynamic_routing(votes, iters, detach_inner) * weight).sum().backward()
    ref_votes = base.clone().requires_grad_(True)
    (_plain_routing(ref_votes, iters, detach_inner) * weight).sum().backward()
    with torch.no_grad():
        _assert_close(dynamic_routing(base, iters, detach_inner), _plain_routing(base, iters, detach_inner), "v")
    _assert_close(votes.grad, ref_votes.grad, "grad votes")


def test_detach_inner_model_gradient_matches_autograd():
    ours, _ = _pair(routing_iters=3, detach_inner=True)
    u = torch.randn(2, 1152, 8) * 0.02  # |s| near 1: squash not saturated
    weight = ours.digits.weight
    ours.digits(u).pow(2).sum().backward()
    fast = weight.grad.clone()
    weight.grad = None
    votes = torch.einsum("bic,ijcd->bijd", u, weight)
    _plain_routing(votes, 3, True).pow(2).sum().backward()
    _assert_close(fast, weight.grad, "grad W (detach_inner)")


def test_two_pending_graphs_keep_their_own_votes():
    ours, _ = _pair(routing_iters=3)
    torch.manual_seed(3)
    images, labels = torch.rand(2, 4, 1, 28, 28), torch.randint(0, 10, (2, 4))

    def total(index):
        out = ours(images[index], labels[index])
        return ours.loss(out, images[index], labels[index]).total

    # Two forwards before one backward (gradient accumulation): each backward reads the votes its
    # own forward saved.
    (total(0) + total(1)).backward()
    together = _grads(ours)
    ours.zero_grad()
    total(0).backward()
    total(1).backward()
    separately = _grads(ours)
    for name in together:
        _assert_close(together[name], separately[name], name)


def test_switching_between_inference_mode_and_training_changes_no_result():
    ours, reference = _pair(routing_iters=2)
    images, labels = torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,))
    ours.eval()
    with torch.inference_mode():
        ours(images)
    with torch.no_grad():
        ours(images)
    ours.train()
    ours.loss(ours(images, labels), images, labels).total.backward()
    with torch.inference_mode():
        scores = ours.eval()(images).scores
    _assert_close(scores, reference.eval()(images).scores, "scores after switching")
