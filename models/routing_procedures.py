"""Routing procedures between one capsule layer and the next, chosen by name.

Every procedure is an `nn.Module` built as `Procedure(children, parents, dim, iters)` (so that one
may own parameters, such as the learned log prior of self-attention routing) and called as
`procedure(u, weight, iters, detach_inner, couplings) -> v`:

  u        child capsules (batch, children, child_dim)
  weight   the transformation matrices W (children, parents, child_dim, dim); the votes are
           u_hat_{j|i} = W_ij^T u_i, (batch, children, parents, dim)
  iters    routing iterations (ignored by the non-iterative procedures; each says so)
  detach_inner
           the couplings are computed from the votes without their gradient, so only the last
           weighted sum of the votes carries it (the meaning of `detach_inner` in dynamic routing)
  couplings
           a list, or None: each iteration's coupling coefficients are appended to it as a
           (batch, children, parents) tensor
  v        parent capsules (batch, parents, dim), whose lengths are the class scores

Votes and routing run in float32 even under autocast, as `votes_and_route` does: softmaxes and
squashes of bf16 votes lose too much.

`names()` lists the registered procedures; `build(name, ...)` makes one. `RoutingName` is the same
list as a type, for the model configs; the module checks on import that the two agree.
"""
from __future__ import annotations

import math
import typing
from typing import Callable, Literal

import torch
from torch import nn

from models.routing import squash, votes_and_route

RoutingName = Literal["dynamic", "uniform", "self_attention", "inverted_dot_product", "random"]

Couplings = list[torch.Tensor] | None

_PROCEDURES: dict[str, type[RoutingProcedure]] = {}


class RoutingProcedure(nn.Module):
    """A routing procedure: built from the layer's shape, called on (u, weight, ...)."""

    def __init__(self, children: int, parents: int, dim: int, iters: int):
        super().__init__()
        self.children_count, self.parents, self.dim, self.iters = children, parents, dim, iters

    def forward(self, u: torch.Tensor, weight: torch.Tensor, iters: int, detach_inner: bool = False,
                couplings: Couplings = None) -> torch.Tensor:
        raise NotImplementedError


def register(name: str):
    def decorator(cls: type[RoutingProcedure]) -> type[RoutingProcedure]:
        if name in _PROCEDURES:
            raise ValueError(f"routing procedure {name!r} is already registered")
        _PROCEDURES[name] = cls
        return cls

    return decorator


def names() -> list[str]:
    return sorted(_PROCEDURES)


def build(name: str, children: int, parents: int, dim: int, iters: int, **options) -> RoutingProcedure:
    if name not in _PROCEDURES:
        raise ValueError(f"unknown routing procedure {name!r}; valid: {', '.join(names())}")
    return _PROCEDURES[name](children, parents, dim, iters, **options)


def float32_votes(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """u_hat_{j|i} = W_ij^T u_i in float32: (batch, children, parents, dim). Call with autocast off."""
    return torch.einsum("bic,ijcd->bijd", u.float(), weight.float())


def weighted_sum(coupling: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """s_j = sum_i c_ij u_hat_{j|i}: (batch, children, parents) x votes -> (batch, parents, dim)."""
    return torch.einsum("bij,bijd->bjd", coupling, votes)


@register("dynamic")
class DynamicRouting(RoutingProcedure):
    """Routing-by-agreement: Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules"
    (NeurIPS), section 2, Procedure 1: b_ij = 0; `iters` times: c_i = softmax_j(b_i),
    s_j = sum_i c_ij u_hat_{j|i}, v_j = squash(s_j) (eq. 1), b_ij += u_hat_{j|i} . v_j.

    Exactly `models.routing.votes_and_route`, the suite's hand-scheduled implementation."""

    def forward(self, u, weight, iters, detach_inner=False, couplings=None):
        return votes_and_route(u, weight, iters, detach_inner, couplings)


@register("uniform")
class UniformRouting(RoutingProcedure):
    """Equal couplings c_ij = 1/parents and no agreement step: v_j = squash(sum_i u_hat_{j|i} / parents).

    The uniform-routing baseline of Paik, Kwak & Kim 2019 ("Capsule Networks Need an Improved Routing
    Algorithm", ACML, PMLR 101, arXiv:1907.13327) and the first iteration of Sabour et
    al.'s Procedure 1, whose logits start at zero. So it is that procedure with one iteration: the
    same function, bit for bit (`iters` is ignored)."""

    def forward(self, u, weight, iters, detach_inner=False, couplings=None):
        return votes_and_route(u, weight, 1, detach_inner, couplings)


@register("self_attention")
class SelfAttentionRouting(RoutingProcedure):
    """Self-attention routing of Efficient-CapsNet: Mazzia, Salvetti & Chiaberge 2021,
    "Efficient-CapsNet: capsule network with self-attention routing" (Sci. Rep. 11:14634),
    section "Methods", the FCCaps layer:

        A_ij = u_hat_{j|i} . (sum_k u_hat_{j|k}) / sqrt(dim)   (each child's vote against the sum of
                                                              all children's votes for parent j)
        c_ij = softmax over the parents j of A_ij
        s_j  = sum_i (c_ij + b_ij) u_hat_{j|i},    v_j = squash(s_j)

    b is the learned log prior, one per (parent, child), initialised to zero; it is stored as
    `prior` with shape (parents, children), the layout of the authors' code (EscVM/Efficient-CapsNet,
    utils/layers.py, FCCaps.b). It is added after the softmax, as there, so c + b is not normalised;
    the recorded couplings are c, which sums to one over the parents.

    Non-iterative: one pass, `iters` is ignored. The squash is a constructor choice: Sabour et al.'s
    by default, so that in CapsNet the routing is the only change; Efficient-CapsNet passes its own,
    (1 - exp(-|s|)) s / |s|, as the authors' FCCaps does."""

    def __init__(self, children: int, parents: int, dim: int, iters: int,
                 squash_fn: Callable[[torch.Tensor], torch.Tensor] = squash):
        super().__init__(children, parents, dim, iters)
        self.squash_fn = squash_fn
        self.prior = nn.Parameter(torch.zeros(parents, children))

    def forward(self, u, weight, iters, detach_inner=False, couplings=None):
        with torch.autocast(device_type=u.device.type, enabled=False):
            votes = float32_votes(u, weight)
            inner = votes.detach() if detach_inner else votes
            totals = inner.sum(dim=1, keepdim=True)  # (batch, 1, parents, dim)
            agreement = (inner * totals).sum(dim=-1) / math.sqrt(votes.shape[-1])
            coupling = torch.softmax(agreement, dim=2)  # over the parents
            if couplings is not None:
                couplings.append(coupling)
            return self.squash_fn(weighted_sum(coupling + self.prior.float().t(), votes))


InvertedReadout = Literal["squash", "linear"]


@register("inverted_dot_product")
class InvertedDotProductRouting(RoutingProcedure):
    """Inverted dot-product attention routing: Tsai, Srivastava, Goh & Salakhutdinov 2020,
    "Capsules with Inverted Dot-Product Attention Routing" (ICLR), section 2, Procedure 1, for
    vector capsules:

        p_j = 0 (so the first couplings are uniform); `iters` times:
        a_ij = p_j . u_hat_{j|i} / sqrt(dim)
        r_ij = softmax over the parents j of a_ij       (the "inverted" attention: parents compete)
        p_j  = LayerNorm(sum_i r_ij u_hat_{j|i})

    As in the authors' code (apple/ml-capsules-inverted-attention-routing, src/layers.py,
    CapsuleFC): the agreement is scaled by 1/sqrt(dim), and LayerNorm is a learned nn.LayerNorm(dim)
    shared by the parents (gain and bias, eps 1e-5). Their dropout on the pose (0 in their configs)
    is left out.

    Adaptation (named choice `readout`): the paper reads a class out of its pose p_j with one linear
    classifier shared by the classes, trained with cross-entropy; CapsNet reads class scores as
    capsule lengths under the margin loss. So v_j keeps p_j's direction and carries the score as
    its length:
      "linear" (default): |v_j| = sigmoid(w . p_j + w0), the paper's shared linear readout mapped
                 into [0, 1] (w, w0 learned);
      "squash": v_j = squash(p_j); LayerNorm fixes |p_j| near sqrt(dim) up to its gain and bias, so
                 every class starts near length dim / (1 + dim), and scores separate only as far as
                 the learned gain and bias let the lengths differ.
    """

    def __init__(self, children: int, parents: int, dim: int, iters: int, readout: InvertedReadout = "linear"):
        super().__init__(children, parents, dim, iters)
        if readout not in typing.get_args(InvertedReadout):
            raise ValueError(f"readout must be one of {', '.join(typing.get_args(InvertedReadout))}, got {readout!r}")
        self.readout = readout
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 1) if readout == "linear" else None

    def forward(self, u, weight, iters, detach_inner=False, couplings=None):
        with torch.autocast(device_type=u.device.type, enabled=False):
            votes = float32_votes(u, weight)
            inner = votes.detach() if detach_inner else votes
            batch, children, parents, dim = votes.shape
            pose = None
            for t in range(iters):
                if pose is None:  # p = 0: a_ij = 0, r_ij = 1 / parents
                    coupling = votes.new_full((batch, children, parents), 1.0 / parents)
                else:
                    agreement = (inner * pose.unsqueeze(1)).sum(dim=-1) / math.sqrt(dim)
                    coupling = torch.softmax(agreement, dim=2)
                if couplings is not None:
                    couplings.append(coupling)
                last = t == iters - 1
                pose = self.norm(weighted_sum(coupling, votes if last else inner))
            return self.read_out(pose)

    def read_out(self, pose: torch.Tensor) -> torch.Tensor:
        if self.readout == "squash":
            return squash(pose)
        score = torch.sigmoid(self.classifier(pose))  # (batch, parents, 1)
        length = torch.sqrt(pose.pow(2).sum(dim=-1, keepdim=True) + 1e-12)
        return score * pose / length


@register("random")
class RandomRouting(RoutingProcedure):
    """Random couplings, no agreement: the random-routing baseline of Paik, Kwak & Kim 2019,
    "Capsule Networks Need an Improved Routing Algorithm" (ACML, PMLR 101, arXiv:1907.13327), the
    baseline of its routing comparison that assigns the coupling strengths at random instead of by
    routing.

        b_ij ~ N(0, 1), drawn afresh for every example and call (training and evaluation alike),
        c_ij = softmax over the parents j of b_ij,   v_j = squash(sum_i c_ij u_hat_{j|i})

    The couplings are positive and sum to one over the parents, as dynamic routing's do, so only
    their agreement-driven values are replaced. The distribution of the draw (standard-normal
    logits through the softmax) is this suite's choice: the paper's text was not at hand to check
    which distribution it used, nor the section that defines the baseline.

    Non-iterative: `iters` is ignored; `detach_inner` changes nothing (the couplings do not depend
    on the votes). `logits` is the one place that draws, so a test can fix the draw."""

    def forward(self, u, weight, iters, detach_inner=False, couplings=None):
        with torch.autocast(device_type=u.device.type, enabled=False):
            votes = float32_votes(u, weight)
            batch, children, parents, _ = votes.shape
            coupling = torch.softmax(self.logits(batch, children, parents, votes.device), dim=2)
            if couplings is not None:
                couplings.append(coupling)
            return squash(weighted_sum(coupling, votes))

    def logits(self, batch: int, children: int, parents: int, device: torch.device) -> torch.Tensor:
        return torch.randn(batch, children, parents, device=device)


if set(typing.get_args(RoutingName)) != set(_PROCEDURES):
    raise RuntimeError(f"RoutingName {typing.get_args(RoutingName)} and the registry {names()} differ")
