"""Dynamic routing between PrimaryCaps and DigitCaps (paper, Procedure 1), with its backward by hand.

`votes_and_route(u, weight, ...)` computes the votes u_hat = W u and routes them; it is the paper's
algorithm, written so that the vote tensor is never materialised twice (see below).
`tests/reference_routing.py` and bench/references.py hold straightforward implementations that the
tests compare against.
"""
from __future__ import annotations

import torch

from models import speed_paths
from models.compile_barrier import eager_under_compile
from models.routing_sweeps import VotesGrad, backward_sweep, blocks, forward_sweep, votes_and_sum


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """|s|^2 / (1 + |s|^2) * s / |s|: keeps the direction, maps the length into [0, 1)."""
    sq_norm = s.pow(2).sum(dim=dim, keepdim=True)
    return s * (sq_norm / (1.0 + sq_norm) / torch.sqrt(sq_norm + eps))



# Routing is memory-bound: the vote tensor u_hat (batch x 1152 x 10 x 16 floats, 47 MB at
# batch 64) is far larger than the caches, while routing does a few flops per element. So:
#   - u_hat is written once, by one batched product over the child axis (on the CPU a C++ kernel
#     that also sums the votes for the first iteration while they are in cache), straight into
#     the layout routing reads best: (children, dim, parents, batch). The reductions over dim and the
#     softmax over parents then run over an outer axis with the contiguous batch axis inside,
#     which vectorises (PyTorch's CPU reductions over a short innermost axis are 5-20x slower);
#   - each routing iteration is one sweep over the children (`models.routing_sweeps`):
#     agreement, logit update, softmax over parents and the weighted sum for the next iteration
#     all use a child's votes while they are in cache, so u_hat is read from memory once per
#     iteration (on the CPU by a small C++ kernel, elsewhere by PyTorch ops: on the CPU on
#     blocks sized for the last-level cache, on GPUs on all children at once);
#   - the first iteration uses the uniform coupling 1/parents (b = 0) without a softmax;
#   - the backward is written by hand: the gradient of u_hat is a sum of rank-one terms
#     c_t (x) ds_t + da_t (x) v_t, formed block by block and fed straight into the two GEMMs
#     that give the gradients of u and W, so it is never materialised either.
# The maths is the paper's Procedure 1 unchanged (softmax over parents, no stop-gradient unless
# `detach_inner`); tests/test_routing_equivalence.py checks outputs and gradients against a
# straightforward broadcast implementation. Off the CPU one block spans all children, so the
# same code issues a few large kernels.


def squash_backward(s: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        (grad_s,) = torch.autograd.grad(squash(s, dim=0), s, grad_v)
    return grad_s


class RoutingState:
    """What the forward keeps for the backward: s_t, v_t (dim, parents, batch) and c_t."""

    def __init__(self, parents: int):
        self.s: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.c: list[torch.Tensor | None] = []  # (children, parents, batch); None: uniform
        self.uniform = 1.0 / parents  # c_1: the logits start at 0


def route_forward(
    votes: torch.Tensor,
    first_sum: torch.Tensor,
    parents: int,
    iters: int,
    couplings: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, RoutingState]:
    """votes: (children, dim, parents * batch); first_sum: its sum over children.

    Returns v as (dim, parents * batch) and the state for the backward. No autograd here.
    """
    children, _, width = votes.shape
    batch = width // parents
    state = RoutingState(parents)
    s = first_sum / parents  # c_1 = 1 / parents
    v = squash(s, dim=0)
    state.s.append(s)
    state.v.append(v)
    state.c.append(None)
    if couplings is not None:
        couplings.append(votes.new_full((), state.uniform).expand(batch, children, parents))
    if iters > 1:
        logits = votes.new_zeros(children, parents, batch)
    for _ in range(1, iters):
        coupling = torch.empty_like(logits)
        s = forward_sweep(votes, v, logits, coupling, parents)
        v = squash(s, dim=0)
        state.s.append(s)
        state.v.append(v)
        state.c.append(coupling)
        if couplings is not None:
            couplings.append(coupling.permute(2, 0, 1))
    return v, state


def route_backward(
    votes: torch.Tensor, state: RoutingState, grad_v: torch.Tensor, detach_inner: bool
) -> list[tuple[torch.Tensor | float, torch.Tensor]]:
    """Gradient of u_hat as rank-one factors [(f, g)]:
    d u_hat[i, :, j, b] = sum over factors of f[i, j, b] * g[:, j, b].

    f is a (children, parents, batch) tensor or a scalar (the uniform first coupling);
    g is (dim, parents * batch).
    """
    children, _, width = votes.shape
    iters = len(state.v)
    factors: list[tuple[torch.Tensor | float, torch.Tensor]] = []
    grad_s = squash_backward(state.s[-1], grad_v)
    if detach_inner or iters == 1:
        # With stop-gradients the couplings are constants: only s_T = sum c_T u_hat carries it.
        last_c = state.c[-1]
        factors.append((state.uniform if last_c is None else last_c, grad_s))
        return factors
    parents = state.c[-1].shape[1]
    grad_logits = votes.new_zeros(children, parents, width // parents)  # d/d a_t, accumulated
    for t in range(iters - 1, 0, -1):  # 0-based: iteration t used c_t, which came from a_{t-1}
        coupling = state.c[t]
        factors.append((coupling, grad_s))
        grad_v_prev = backward_sweep(votes, coupling, grad_s, grad_logits, parents)
        factors.append((grad_logits.clone(), state.v[t - 1]))
        grad_s = squash_backward(state.s[t - 1], grad_v_prev)
    factors.append((state.uniform, grad_s))
    return factors


class _VotesAndRoute(torch.autograd.Function):
    """u_hat = W u as one batched product over children (`votes_and_sum`), then routing; the
    backward forms the vote gradient block by block and feeds it to two bmm."""

    @staticmethod
    def forward(ctx, u_t, weight_t, parents, iters, detach_inner, couplings):
        # u_t: (children, child_dim, batch); weight_t: (children, dim * parents, child_dim)
        children, _, batch = u_t.shape
        rows = weight_t.shape[1]
        dim = rows // parents
        votes = u_t.new_empty(children, rows, batch)
        first_sum = votes_and_sum(weight_t, u_t, votes)
        votes = votes.view(children, dim, parents * batch)
        v, state = route_forward(votes, first_sum.view(dim, -1), parents, iters, couplings)
        ctx.save_for_backward(u_t, weight_t, votes)
        ctx.state, ctx.detach_inner = state, detach_inner
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        u_t, weight_t, votes = ctx.saved_tensors
        votes_grad = VotesGrad(route_backward(votes, ctx.state, grad_v, ctx.detach_inner))
        children, dim, width = votes.shape
        batch = u_t.shape[2]
        grad_u = torch.empty_like(u_t) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight_t) if ctx.needs_input_grad[1] else None
        buffer = None
        for part in blocks(children, dim * width * votes.element_size(), votes.device):
            rows = part.stop - part.start
            if buffer is None or buffer.shape[0] < rows:
                buffer = votes.new_empty(rows, dim, width)
            block = votes_grad.rows(part, buffer[:rows]).view(-1, weight_t.shape[1], batch)
            if grad_u is not None:
                torch.bmm(weight_t[part].transpose(1, 2), block, out=grad_u[part])
            if grad_w is not None:
                torch.bmm(block, u_t[part].transpose(1, 2), out=grad_w[part])
        return grad_u, grad_w, None, None, None, None



@eager_under_compile
def _votes_and_route_eager(u_t, weight_t, parents, iters, detach_inner, couplings):
    # torch.compile runs this hand-scheduled part eagerly (a graph break) where it calls the CPU's
    # C++ kernels, and compiles the convolutions, decoder and loss around it.
    return _VotesAndRoute.apply(u_t, weight_t, parents, iters, detach_inner, couplings)


def from_routing_layout(v: torch.Tensor, parents: int) -> torch.Tensor:
    """(dim, parents * batch) -> (batch, parents, dim)."""
    return v.view(v.shape[0], parents, -1).permute(2, 1, 0)


def route_with_autograd(u: torch.Tensor, weight: torch.Tensor, iters: int, detach_inner: bool = False,
                        couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The same Procedure 1 in plain tensor ops, differentiated by autograd: what torch.compile
    traces without a graph break, so that inductor fuses the passes over the votes (on a GPU, where
    the hand-scheduled sweeps would run as many small kernels). u (batch, children, child_dim),
    weight (children, parents, child_dim, dim); returns v (batch, parents, dim).

    With `detach_inner` the inner iterations see the votes without their gradient, so the
    couplings are constants and only the last iteration's sum carries it, as in the hand-written
    backward."""
    votes = torch.einsum("bic,ijcd->bijd", u, weight)  # (batch, children, parents, dim)
    inner = votes.detach() if detach_inner else votes
    logits = votes.new_zeros(votes.shape[:3])  # b_ij = 0: the first coupling is uniform
    for t in range(iters):
        last = t == iters - 1
        coupling = torch.softmax(logits, dim=2)  # over the parents
        if couplings is not None:
            couplings.append(coupling)
        v = squash((coupling.unsqueeze(-1) * (votes if last else inner)).sum(dim=1))
        if not last:
            logits = logits + (inner * v.unsqueeze(1)).sum(dim=-1)  # agreement u_hat . v
    return v


@torch.compiler.assume_constant_result
def _kernels_behind_barrier(device_type: str) -> bool:
    """Whether a compiled step keeps the hand-scheduled routing (eager, behind the compile barrier):
    on the CPU where the C++ kernels are built and the speed plan, if any, chose them. Elsewhere
    (CUDA, CAPSBENCH_CPU_KERNELS=0, or a plan of "sweeps" or "autograd") the compiled step traces
    `route_with_autograd`. A constant for the tracer: it is asked once, not traced (finding the
    kernels takes a lock)."""
    from models.cpu import kernels as cpu_kernels

    plan = speed_paths.current()
    chosen = plan is None or plan.routing in (None, "kernels")
    return device_type == "cpu" and chosen and cpu_kernels.module() is not None


def _plain_by_plan(device_type: str) -> bool:
    """Whether the speed plan in force runs the plain twin (`route_with_autograd`) on the CPU."""
    plan = speed_paths.current()
    return device_type == "cpu" and plan is not None and plan.routing == "autograd"


def votes_and_route(
    u: torch.Tensor,
    weight: torch.Tensor,
    iters: int,
    detach_inner: bool = False,
    couplings: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """u: child capsules (batch, children, child_dim); weight: W (children, parents, child_dim, dim).
    Returns the parent capsules v (batch, parents, dim). With a list `couplings`, the coupling
    coefficients of every iteration are appended as (batch, children, parents) tensors.

    Eager, the hand-scheduled routing above runs (its C++ kernels on the CPU); under torch.compile,
    the plain-ops one where the kernels are not in play; on the CPU, whichever the speed plan in
    force chose (models/speed_paths.py). Votes and routing run in float32 even under
    autocast (softmax and squash of bf16 votes lose too much); the layers around them keep the
    autocast dtype."""
    children, parents, child_dim, dim = weight.shape
    with torch.autocast(device_type=u.device.type, enabled=False):
        device_type = u.device.type
        if _plain_by_plan(device_type) or (torch.compiler.is_compiling() and not _kernels_behind_barrier(device_type)):
            return route_with_autograd(u.float(), weight.float(), iters, detach_inner, couplings)
        u_t = u.float().permute(1, 2, 0).contiguous()  # (children, child_dim, batch)
        weight_t = weight.float().permute(0, 3, 1, 2).reshape(children, dim * parents, child_dim)
        v = _votes_and_route_eager(u_t, weight_t, parents, iters, detach_inner, couplings)
    return from_routing_layout(v, parents)
