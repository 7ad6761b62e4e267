"""Test-only routing on given votes: the same routing code as the model (models/routing.py), fed
u_hat directly, with the vote gradient materialised. Tests use it to compare against a broadcast
implementation and to check couplings on hand-made votes.
"""
from __future__ import annotations

import torch

from models.routing import from_routing_layout, route_backward, route_forward
from models.routing_sweeps import VotesGrad, blocks


class _RouteVotes(torch.autograd.Function):
    """Routing on given votes (children, dim, parents * batch); the gradient is materialised."""

    @staticmethod
    def forward(ctx, votes, parents, iters, detach_inner, couplings):
        v, state = route_forward(votes, votes.sum(0), parents, iters, couplings)
        ctx.save_for_backward(votes)
        ctx.state, ctx.detach_inner = state, detach_inner
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        (votes,) = ctx.saved_tensors
        votes_grad = VotesGrad(route_backward(votes, ctx.state, grad_v, ctx.detach_inner))
        grad = torch.empty_like(votes)
        children, dim, width = votes.shape
        for part in blocks(children, dim * width * votes.element_size(), votes.device):
            votes_grad.rows(part, grad[part])
        return grad, None, None, None, None


def dynamic_routing(
    votes: torch.Tensor,
    iters: int,
    detach_inner: bool = False,
    couplings: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Routing-by-agreement between children i and parents j (paper, Procedure 1).

    votes: u_hat with shape (batch, children, parents, dim). Returns v, (batch, parents, dim).
    If `couplings` is a list, the coupling coefficients c_ij of every iteration are appended
    as (batch, children, parents) tensors. c_1 is uniform: the logits b_ij start at 0.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    batch, children, parents, dim = votes.shape
    laid_out = votes.permute(1, 3, 2, 0).reshape(children, dim, parents * batch).contiguous()
    v = _RouteVotes.apply(laid_out, parents, iters, detach_inner, couplings)
    return from_routing_layout(v, parents)
