"""CapsNet with dynamic routing (Sabour, Frosst & Hinton 2017, arXiv:1710.09829).

Defaults are the paper's MNIST network; every deviation is a named option of `CapsNetConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.compile_barrier import eager_under_compile
from models.dft_conv import direct_only, stride2_conv_dft, worthwhile
from models.output import LossTerms, ModelOutput
from models.registry import register
from models.routing_sweeps import VotesGrad, backward_sweep, blocks, forward_sweep, votes_and_sum
from models.workspace import Workspace

MARGIN_CONVENTIONS = ("paper", "official")
PRIMARY_CONV_METHODS = ("auto", "direct", "dft")


def _check_primary_conv(method: str) -> None:
    if method not in PRIMARY_CONV_METHODS:
        raise ValueError(f"primary_conv must be one of {', '.join(PRIMARY_CONV_METHODS)}, got {method!r}")


@dataclass(frozen=True)
class CapsNetConfig:
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    conv1_channels: int = 256
    primary_types: int = 32
    primary_dim: int = 8
    digit_dim: int = 16
    routing_iters: int = 3
    # Scale of the summed squared reconstruction error in the loss (paper: 0.0005).
    recon_weight: float = 0.0005
    decoder: bool = True
    # Stop gradients through u_hat in all but the last routing iteration. Off in the paper and
    # the official code; some re-implementations do it, so it is an ablation flag.
    detach_inner: bool = False
    # "paper": margin loss summed over classes (the paper's formula). "official": averaged over
    # classes and halved as in the official code, which weighs reconstruction ~20x more.
    margin_convention: str = "paper"
    m_plus: float = 0.9
    m_minus: float = 0.1
    margin_lambda: float = 0.5
    # With softmax over parents, W must start small for routing to train (REFERENCES.md 4).
    weight_init_std: float = 0.01
    # How the PrimaryCaps convolution is computed; not a model choice: all give the same
    # function up to float rounding. "direct": nn.Conv2d (oneDNN, cuDNN). "dft": through a small
    # DFT (models/dft_conv.py), whose backward is ~2.4x faster than oneDNN's on the CPU.
    # "auto": the DFT where it is faster (training, CPU, float32, batch >= 32), else direct.
    primary_conv: str = "auto"

    def __post_init__(self):
        if self.routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {self.routing_iters}")
        if self.recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if self.margin_convention not in MARGIN_CONVENTIONS:
            raise ValueError(
                f"margin_convention must be one of {', '.join(MARGIN_CONVENTIONS)}, "
                f"got {self.margin_convention!r}"
            )
        _check_primary_conv(self.primary_conv)
        if self.primary_grid < 1:
            raise ValueError(f"input_size {self.input_size} is too small for CapsNet (min 26)")

    @property
    def primary_grid(self) -> int:
        """Side of the PrimaryCaps grid: conv1 (9x9, stride 1) then 9x9 stride 2."""
        return (self.input_size - 8 - 9) // 2 + 1

    @property
    def num_primary(self) -> int:
        return self.primary_types * self.primary_grid**2


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
#     blocks sized for the last-level cache, on GPUs on all children at once); its memory is kept
#     between steps (`models.workspace`) instead of re-allocated;
#   - the first iteration uses the uniform coupling 1/parents (b = 0) without a softmax;
#   - the backward is written by hand: the gradient of u_hat is a sum of rank-one terms
#     c_t (x) ds_t + da_t (x) v_t, formed block by block and fed straight into the two GEMMs
#     that give the gradients of u and W, so it is never materialised either.
# The maths is the paper's Procedure 1 unchanged (softmax over parents, no stop-gradient unless
# `detach_inner`); tests/test_routing_equivalence.py checks outputs and gradients against a
# straightforward broadcast implementation. Off the CPU one block spans all children, so the
# same code issues a few large kernels.


def _squash_backward(s: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        (grad_s,) = torch.autograd.grad(squash(s, dim=0), s, grad_v)
    return grad_s


class _RoutingState:
    """What the forward keeps for the backward: s_t, v_t (dim, parents, batch) and c_t."""

    def __init__(self, parents: int):
        self.s: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.c: list[torch.Tensor | None] = []  # (children, parents, batch); None: uniform
        self.uniform = 1.0 / parents  # c_1: the logits start at 0


def _route_forward(
    votes: torch.Tensor,
    first_sum: torch.Tensor,
    parents: int,
    iters: int,
    couplings: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, _RoutingState]:
    """votes: (children, dim, parents * batch); first_sum: its sum over children.

    Returns v as (dim, parents * batch) and the state for the backward. No autograd here.
    """
    children, _, width = votes.shape
    batch = width // parents
    state = _RoutingState(parents)
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


def _route_backward(
    votes: torch.Tensor, state: _RoutingState, grad_v: torch.Tensor, detach_inner: bool
) -> list[tuple[torch.Tensor | float, torch.Tensor]]:
    """Gradient of u_hat as rank-one factors [(f, g)]:
    d u_hat[i, :, j, b] = sum over factors of f[i, j, b] * g[:, j, b].

    f is a (children, parents, batch) tensor or a scalar (the uniform first coupling);
    g is (dim, parents * batch).
    """
    children, _, width = votes.shape
    iters = len(state.v)
    factors: list[tuple[torch.Tensor | float, torch.Tensor]] = []
    grad_s = _squash_backward(state.s[-1], grad_v)
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
        grad_s = _squash_backward(state.s[t - 1], grad_v_prev)
    factors.append((state.uniform, grad_s))
    return factors


class _RouteVotes(torch.autograd.Function):
    """Routing on given votes (children, dim, parents * batch); the gradient is materialised."""

    @staticmethod
    def forward(ctx, votes, parents, iters, detach_inner, couplings):
        v, state = _route_forward(votes, votes.sum(0), parents, iters, couplings)
        ctx.save_for_backward(votes)
        ctx.state, ctx.detach_inner = state, detach_inner
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        (votes,) = ctx.saved_tensors
        votes_grad = VotesGrad(_route_backward(votes, ctx.state, grad_v, ctx.detach_inner))
        grad = torch.empty_like(votes)
        children, dim, width = votes.shape
        for part in blocks(children, dim * width * votes.element_size(), votes.device):
            votes_grad.rows(part, grad[part])
        return grad, None, None, None, None


class _VotesAndRoute(torch.autograd.Function):
    """u_hat = W u as one batched product over children (`votes_and_sum`), then routing; the
    backward forms the vote gradient block by block and feeds it to two bmm."""

    @staticmethod
    def forward(ctx, u_t, weight_t, parents, iters, detach_inner, couplings, workspace):
        # u_t: (children, child_dim, batch); weight_t: (children, dim * parents, child_dim)
        children, _, batch = u_t.shape
        rows = weight_t.shape[1]
        dim = rows // parents
        votes = workspace.get("votes", (children, rows, batch), u_t)
        first_sum = votes_and_sum(weight_t, u_t, votes)
        votes = votes.view(children, dim, parents * batch)
        v, state = _route_forward(votes, first_sum.view(dim, -1), parents, iters, couplings)
        ctx.save_for_backward(u_t, weight_t, votes)
        ctx.state, ctx.detach_inner = state, detach_inner
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        u_t, weight_t, votes = ctx.saved_tensors
        votes_grad = VotesGrad(_route_backward(votes, ctx.state, grad_v, ctx.detach_inner))
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
        return grad_u, grad_w, None, None, None, None, None


@eager_under_compile
def _votes_and_route(u_t, weight_t, parents, iters, detach_inner, couplings, workspace):
    # torch.compile runs this hand-scheduled part eagerly (a graph break) and compiles the
    # convolutions, decoder and loss around it; tracing the blocked loops gains nothing.
    return _VotesAndRoute.apply(u_t, weight_t, parents, iters, detach_inner, couplings, workspace)


@eager_under_compile
def _route_votes(votes, parents, iters, detach_inner, couplings):
    return _RouteVotes.apply(votes, parents, iters, detach_inner, couplings)


def _from_routing_layout(v: torch.Tensor, parents: int) -> torch.Tensor:
    """(dim, parents * batch) -> (batch, parents, dim)."""
    return v.view(v.shape[0], parents, -1).permute(2, 1, 0)


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
    v = _route_votes(laid_out, parents, iters, detach_inner, couplings)
    return _from_routing_layout(v, parents)


class PrimaryCaps(nn.Module):
    """One convolution whose output channels are grouped into capsules.

    Channel t * dim + k is component k of capsule type t, so a capsule is `dim` channels at
    one grid position (not `dim` positions of one channel, a common reshape bug).
    """

    def __init__(self, in_channels: int, types: int, dim: int, method: str = "auto"):
        super().__init__()
        _check_primary_conv(method)
        self.types, self.dim, self.method = types, dim, method
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size=9, stride=2)
        self._workspace = Workspace()

    def uses_dft(self, x: torch.Tensor) -> bool:
        if direct_only():
            return False
        return self.method == "dft" or (self.method == "auto" and worthwhile(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_dft(x):
            out = stride2_conv_dft(x, self.conv.weight, self.conv.bias, self._workspace)
        else:
            out = self.conv(x)
        batch, _, height, width = out.shape
        out = out.view(batch, self.types, self.dim, height, width)
        out = out.permute(0, 1, 3, 4, 2).reshape(batch, self.types * height * width, self.dim)
        return squash(out)


class DigitCaps(nn.Module):
    """Class capsules: one (child_dim x parent_dim) matrix W_ij per (child, parent) pair."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(
            config.weight_init_std
            * torch.randn(config.num_primary, config.num_classes, config.primary_dim, config.digit_dim)
        )
        self._workspace = Workspace()

    def _laid_out(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u as (children, child_dim, batch), W as (children, dim * parents, child_dim)."""
        children, parents, child_dim, dim = self.weight.shape
        u_t = u.float().permute(1, 2, 0).contiguous()
        weight_t = self.weight.float().permute(0, 3, 1, 2).reshape(children, dim * parents, child_dim)
        return u_t, weight_t

    def forward(self, u: torch.Tensor, couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
        # Votes and routing in float32 even under autocast (softmax and squash of bf16 votes
        # lose too much); the convolutions and the decoder still run in the autocast dtype.
        parents = self.weight.shape[1]
        with torch.autocast(device_type=u.device.type, enabled=False):
            u_t, weight_t = self._laid_out(u)
            v = _votes_and_route(
                u_t, weight_t, parents, self.config.routing_iters, self.config.detach_inner, couplings,
                self._workspace,
            )
        return _from_routing_layout(v, parents)


class Decoder(nn.Module):
    """FC 512 ReLU -> FC 1024 ReLU -> FC pixels sigmoid, fed the masked class capsules."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.image_shape = (config.in_channels, config.input_size, config.input_size)
        pixels = config.in_channels * config.input_size**2
        self.net = nn.Sequential(
            nn.Linear(config.num_classes * config.digit_dim, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, pixels),
            nn.Sigmoid(),
        )

    def forward(self, capsules: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        mask = F.one_hot(chosen, capsules.shape[1]).to(capsules.dtype)
        masked = (capsules * mask.unsqueeze(-1)).flatten(1)
        return self.net(masked).view(-1, *self.image_shape)


def margin_loss(lengths: torch.Tensor, labels: torch.Tensor, config: CapsNetConfig) -> torch.Tensor:
    """Per-example margin loss, summed over classes ("paper") or halved mean ("official")."""
    target = F.one_hot(labels, lengths.shape[1]).to(lengths.dtype)
    present = target * F.relu(config.m_plus - lengths).pow(2)
    absent = config.margin_lambda * (1 - target) * F.relu(lengths - config.m_minus).pow(2)
    per_class = present + absent
    if config.margin_convention == "official":
        return 0.5 * per_class.mean(dim=1)
    return per_class.sum(dim=1)


class CapsNet(nn.Module):
    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=9)
        self.primary = PrimaryCaps(config.conv1_channels, config.primary_types, config.primary_dim, config.primary_conv)
        self.digits = DigitCaps(config)
        self.decoder = Decoder(config) if config.decoder else None

    def capsules(self, images: torch.Tensor, couplings: list[torch.Tensor] | None = None):
        """Class capsule vectors v_j: (batch, classes, digit_dim)."""
        return self.digits(self.primary(F.relu(self.conv1(images))), couplings)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        capsules = self.capsules(images)
        # Lengths are the class scores; the norm is taken in float32 even under autocast.
        scores = torch.linalg.vector_norm(capsules.float(), dim=-1)
        reconstruction = None
        # With recon_weight 0 the decoder is not trained, so training skips its cost.
        wanted = not self.training or self.config.recon_weight > 0
        if self.decoder is not None and wanted:
            # The true class during training, the predicted one at evaluation (paper, 4.1).
            chosen = labels if self.training and labels is not None else scores.argmax(dim=1)
            reconstruction = self.decoder(capsules, chosen)
        return ModelOutput(scores=scores, reconstruction=reconstruction)

    def loss(self, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        margin = margin_loss(output.scores, labels, self.config).mean()
        parts = {"margin": margin.detach()}
        total = margin
        if output.reconstruction is not None and self.config.recon_weight > 0:
            sse = (output.reconstruction.float() - images.float()).pow(2).flatten(1).sum(1).mean()
            parts["reconstruction_sse"] = sse.detach()
            total = total + self.config.recon_weight * sse
        return LossTerms(total=total, parts=parts)


@register("capsnet", CapsNetConfig)
def build_capsnet(config: CapsNetConfig) -> CapsNet:
    return CapsNet(config)
