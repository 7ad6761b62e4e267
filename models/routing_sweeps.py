"""The sweeps of dynamic routing over the vote tensor, and where they run.

A routing iteration reads the votes u_hat (children, dim, parents * batch) once forward
(`forward_sweep`: agreement, logit update, softmax over the parents, weighted sum) and once
backward (`backward_sweep`: its adjoint); the backward then writes the vote gradient block by
block from its rank-one factors (`VotesGrad.rows`). In PyTorch ops each sweep is four passes
with block temporaries (`_torch_*`, blocked for the last-level cache); on the CPU a small C++
kernel (models/cpu/csrc/routing_sweeps.h, built by `models.cpu.kernels`) does the same arithmetic
in one pass per child, and the votes themselves (`votes_and_sum`) come from a kernel that also
sums them for the first iteration while they are in cache. Which runs on a CPU is the speed
plan's choice (models/speed_paths.py, measured where training runs by
studies/training/speed_choice.py; `python -m bench.speed_paths` measures it by hand, and
bench/README.md keeps what it measured where the kernels were written). Off the CPU, for other
dtypes, where the kernels cannot be built and inside `torch_sweeps()`, the PyTorch version runs;
both compute the same function (tested), and the kernels' sums do not depend on the thread count
(fixed chunks of children, added in order).
"""
from __future__ import annotations

import contextlib

import torch

from models import speed_paths
from models.cpu import kernels as cpu_kernels

# Bigger blocks mean fewer (OpenMP-parallel) ops per step, which matters when other processes
# share the cores; a block the size of the whole vote tensor no longer fits the last-level cache.
_BLOCK_BYTES = 1 << 23
# Without a speed plan: the kernels vectorise over the batch axis, so at small batches they lose
# to the PyTorch ops (bench/README.md has the factors by batch).
MIN_KERNEL_BATCH = 16


def blocks(children: int, bytes_per_child: int, device: torch.device):
    """Slices of the child axis sized for the last-level cache; off the CPU one slice of all."""
    if device.type != "cpu":
        yield slice(0, children)
        return
    step = max(1, min(children, _BLOCK_BYTES // max(1, bytes_per_child)))
    for start in range(0, children, step):
        yield slice(start, min(children, start + step))


def _torch_votes_and_sum(weight_t, u_t, votes):
    children, rows, _ = weight_t.shape
    total = u_t.new_zeros(rows, u_t.shape[2])
    for part in blocks(children, votes[0].numel() * votes.element_size(), votes.device):
        torch.bmm(weight_t[part], u_t[part], out=votes[part])
        total += votes[part].sum(0)
    return total


def _torch_forward_sweep(votes, v, logits, coupling, parents):
    children, dim, width = votes.shape
    s = votes.new_zeros(dim, width)
    for part in blocks(children, dim * width * votes.element_size(), votes.device):
        block = votes[part]
        block_logits = logits[part]
        block_logits += (block * v).sum(1).view_as(block_logits)  # u_hat . v_j
        torch.softmax(block_logits, dim=1, out=coupling[part])  # over the parents
        s += (block * coupling[part].view(-1, 1, width)).sum(0)
    return s


def _torch_backward_sweep(votes, coupling, grad_s, grad_logits, parents):
    children, dim, width = votes.shape
    grad_v_prev = votes.new_zeros(dim, width)
    for part in blocks(children, dim * width * votes.element_size(), votes.device):
        block = votes[part]
        block_c = coupling[part]
        grad_c = (block * grad_s).sum(1).view_as(block_c)
        block_grad_logits = grad_logits[part]
        # softmax backward over the parents
        block_grad_logits += block_c * (grad_c - (block_c * grad_c).sum(1, keepdim=True))
        grad_v_prev += (block * block_grad_logits.view(-1, 1, width)).sum(0)
    return grad_v_prev


def _torch_votes_grad_rows(fs, gs, shared, part, out):
    out.copy_(shared.expand_as(out))
    for f, g in zip(fs, gs):
        out.addcmul_(f[part].view(part.stop - part.start, 1, -1), g)
    return out


_disabled_here = False


@contextlib.contextmanager
def torch_sweeps():
    """Inside, routing uses the PyTorch ops everywhere (e.g. to test the kernel against them)."""
    global _disabled_here
    previous, _disabled_here = _disabled_here, True
    try:
        yield
    finally:
        _disabled_here = previous


def _use_kernel(votes: torch.Tensor, batch: int) -> bool:
    """Whether the C++ kernel runs: as the speed plan in force says (models/speed_paths.py), or
    without one from MIN_KERNEL_BATCH; only where the kernels take the tensors."""
    if _disabled_here:
        return False
    plan = speed_paths.current()
    chosen = batch >= MIN_KERNEL_BATCH if plan is None or plan.routing is None else plan.routing == "kernels"
    return chosen and cpu_kernels.usable(votes)


def votes_and_sum(weight_t, u_t, votes) -> torch.Tensor:
    """Writes the votes u_hat_i = W_i u_i into votes (children, rows, batch) and returns their sum
    over the children (rows, batch); weight_t is (children, rows, inner), u_t (children, inner,
    batch)."""
    if _use_kernel(votes, u_t.shape[2]) and cpu_kernels.usable(weight_t, u_t) and votes.is_contiguous():
        return cpu_kernels.module().votes_and_sum(weight_t.contiguous(), u_t.contiguous(), votes)
    return _torch_votes_and_sum(weight_t, u_t, votes)


def forward_sweep(votes, v, logits, coupling, parents: int) -> torch.Tensor:
    """votes (children, dim, width = parents * batch), v (dim, width); updates logits and
    coupling (children, parents, batch) in place and returns s = sum over children of c u_hat.
    votes, logits and coupling must be contiguous (the callers allocate them so)."""
    if _use_kernel(votes, logits.shape[2]):
        return cpu_kernels.module().forward_sweep(votes, v.contiguous(), logits, coupling, parents)
    return _torch_forward_sweep(votes, v, logits, coupling, parents)


def backward_sweep(votes, coupling, grad_s, grad_logits, parents: int) -> torch.Tensor:
    """Adds the gradient through this iteration's softmax to grad_logits (in place) and returns
    the gradient of the previous iteration's v, (dim, width)."""
    if _use_kernel(votes, grad_logits.shape[2]):
        return cpu_kernels.module().backward_sweep(votes, coupling, grad_s.contiguous(), grad_logits, parents)
    return _torch_backward_sweep(votes, coupling, grad_s, grad_logits, parents)


class VotesGrad:
    """The gradient of u_hat held as rank-one factors [(f, g)], d u_hat[i, :, w] = sum f[i, w] g[:, w],
    f a (children, parents, batch) tensor or a float (the same for every child), g (dim, width);
    `rows` writes a block of it, so the whole (47 MB at batch 64) never exists at once."""

    def __init__(self, factors: list[tuple[torch.Tensor | float, torch.Tensor]]):
        g = factors[0][1]
        self.shared = torch.zeros(g.shape, dtype=g.dtype, device=g.device)  # the float factors, summed
        self.f: list[torch.Tensor] = []
        self.g: list[torch.Tensor] = []
        for f, g in factors:
            if isinstance(f, float):
                self.shared.add_(g, alpha=f)
            else:
                self.f.append(f.contiguous())
                self.g.append(g.contiguous())

    def rows(self, part: slice, out: torch.Tensor) -> torch.Tensor:
        """Rows `part` into out, (part length, dim, width)."""
        # without per-child factors (f) the rows are copies of `shared`: no kernel needed
        if self.f and _use_kernel(out, self.f[0].shape[2]) and out.is_contiguous():
            cpu_kernels.module().votes_grad_rows(self.f, self.g, self.shared, part.start, out)
            return out
        return _torch_votes_grad_rows(self.f, self.g, self.shared, part, out)
