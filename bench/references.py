"""Reference implementations kept purely for comparison with `models.capsnet` (never trained).

(a) `BroadcastCapsNet`: the straightforward CapsNet that common public PyTorch versions
    write: W stored as (1, children, parents, dim, child_dim), u_hat materialised with
    expand + matmul on broadcast 5-D tensors, routing with elementwise products and sums on
    (batch, children, parents, dim, 1) tensors, every iteration re-allocating them. The maths is
    the paper's (softmax over the parents, no stop-gradient), so with the same weights it must
    give our model's outputs and gradients (tests/test_routing_equivalence.py). Written here from
    the paper, not copied from any repository.
(b) `ConvStem`: Conv1 + the PrimaryCaps layer alone, forward and backward: the floor no
    routing implementation can beat, since every CapsNet has to run these two convolutions. It
    computes them as the model it is compared with does (`primary_conv`).
(c) `PlainCapsNet`: CapsNet as a careful engineer writes it with plain autograd, the fair
    reference: our model's Conv1, PrimaryCaps (nn.Conv2d), Decoder and margin loss, and between
    them the votes by one einsum over the shared W (no copy of W per image) and routing in a few
    tensor ops per iteration (softmax over the parents, weighted sum, squash, agreement update),
    differentiated by autograd; no custom kernel, no hand-written backward. The votes are laid
    out (batch, parents, children, dim) so that the weighted sum and the agreement are batched
    matrix products, the fastest of the plain layouts tried (bench/README.md). Like our model it routes
    in float32 under autocast. Same parameter names as `CapsNet`, so it loads its state dict.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.capsnet import CapsNet, CapsNetConfig, Decoder, PrimaryCaps, margin_loss
from models.output import LossTerms, ModelOutput
from models.routing import squash


def _squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    squared = (s**2).sum(dim=dim, keepdim=True)
    return squared / (1 + squared) * s / torch.sqrt(squared + 1e-8)


class BroadcastCapsNet(nn.Module):
    """Reference (a). Same parameters as `CapsNet` in the public-code layout."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=9)
        self.primary_conv = nn.Conv2d(
            config.conv1_channels, config.primary_types * config.primary_dim, kernel_size=9, stride=2
        )
        self.W = nn.Parameter(
            config.weight_init_std
            * torch.randn(1, config.num_primary, config.num_classes, config.digit_dim, config.primary_dim)
        )
        self.decoder = Decoder(config) if config.decoder else None

    @torch.no_grad()
    def copy_from(self, model: CapsNet) -> "BroadcastCapsNet":
        """Take `model`'s weights (W transposed into this layout)."""
        self.conv1.load_state_dict(model.conv1.state_dict())
        self.primary_conv.load_state_dict(model.primary.conv.state_dict())
        self.W.copy_(model.digits.weight.transpose(-1, -2).unsqueeze(0))
        if self.decoder is not None:
            self.decoder.load_state_dict(model.decoder.state_dict())
        return self

    def capsules(self, images: torch.Tensor) -> torch.Tensor:
        config = self.config
        x = F.relu(self.conv1(images))
        x = self.primary_conv(x)
        batch = x.shape[0]
        grid = config.primary_grid
        # channel t * dim + k is component k of capsule type t
        u = x.view(batch, config.primary_types, config.primary_dim, grid, grid)
        u = u.permute(0, 1, 3, 4, 2).reshape(batch, -1, config.primary_dim)
        u = _squash(u)
        # (batch, children, parents, child_dim, 1), broadcast against W
        u = u[:, :, None, :, None].expand(-1, -1, config.num_classes, -1, -1)
        weight = self.W.expand(batch, -1, -1, -1, -1)
        u_hat = torch.matmul(weight, u)  # (batch, children, parents, dim, 1)
        logits = torch.zeros(batch, u_hat.shape[1], config.num_classes, 1, 1, device=images.device)
        for iteration in range(config.routing_iters):
            c = F.softmax(logits, dim=2)  # over the parents
            s = (c * u_hat).sum(dim=1, keepdim=True)  # (batch, 1, parents, dim, 1)
            v = _squash(s, dim=3)
            if iteration < config.routing_iters - 1:
                agreement = (u_hat * v.expand_as(u_hat)).sum(dim=3, keepdim=True)
                logits = logits + agreement
        return v.squeeze(1).squeeze(-1)  # (batch, parents, dim)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        capsules = self.capsules(images)
        scores = torch.sqrt((capsules**2).sum(dim=-1))
        reconstruction = None
        if self.decoder is not None:
            chosen = labels if self.training and labels is not None else scores.argmax(dim=1)
            reconstruction = self.decoder(capsules, chosen)
        return ModelOutput(scores=scores, reconstruction=reconstruction)

    def loss(self, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        total = margin_loss(output.scores, labels, self.config).mean()
        if output.reconstruction is not None:
            sse = (output.reconstruction - images).pow(2).flatten(1).sum(1).mean()
            total = total + self.config.recon_weight * sse
        return LossTerms(total=total)


class ConvStem(nn.Module):
    """Reference (b): Conv1 (ReLU) and the PrimaryCaps layer, nothing else, computed by the
    model's own modules (so with the same `primary_conv` method as the model it is the floor of)."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=9)
        self.primary = PrimaryCaps(config.conv1_channels, config.primary_types, config.primary_dim, config.primary_conv)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        out = self.primary(F.relu(self.conv1(images)))
        return ModelOutput(scores=out.flatten(1))

    def loss(self, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        # Any scalar that needs the gradients of both convolutions will do.
        return LossTerms(total=output.scores.mean())


class PlainDigitCaps(nn.Module):
    """Votes by one einsum, routing-by-agreement in plain tensor ops, autograd for the backward."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config
        # CapsNet's layout and init: W_ij is weight[i, j], (child_dim x digit_dim)
        self.weight = nn.Parameter(
            config.weight_init_std
            * torch.randn(config.num_primary, config.num_classes, config.primary_dim, config.digit_dim)
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: (batch, children, child_dim) -> v: (batch, parents, dim)."""
        iters = self.config.routing_iters
        with torch.autocast(device_type=u.device.type, enabled=False):
            votes = torch.einsum("bic,ijcd->bjid", u.float(), self.weight.float())  # u_hat_j|i
            inner = votes.detach() if self.config.detach_inner else votes
            logits = votes.new_zeros(votes.shape[:3])  # b_ij as (batch, parents, children)
            for iteration in range(iters):
                last = iteration == iters - 1
                coupling = logits.softmax(dim=1)  # over the parents
                s = torch.matmul(coupling.unsqueeze(2), votes if last else inner).squeeze(2)
                v = squash(s)
                if not last:
                    logits = logits + torch.matmul(inner, v.unsqueeze(-1)).squeeze(-1)  # u_hat_j|i . v_j
        return v


class PlainCapsNet(nn.Module):
    """Reference (c): `CapsNet` with nn.Conv2d for PrimaryCaps and `PlainDigitCaps` for routing."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config = dataclasses.replace(config, primary_conv="direct")
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=9)
        self.primary = PrimaryCaps(config.conv1_channels, config.primary_types, config.primary_dim, "direct")
        self.digits = PlainDigitCaps(config)
        self.decoder = Decoder(config) if config.decoder else None

    def copy_from(self, model: CapsNet) -> "PlainCapsNet":
        """Take `model`'s weights (the same names and layouts)."""
        self.load_state_dict(model.state_dict())
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        capsules = self.digits(self.primary(F.relu(self.conv1(images))))
        scores = capsules.norm(dim=-1)
        reconstruction = None
        if self.decoder is not None and (not self.training or self.config.recon_weight > 0):
            chosen = labels if self.training and labels is not None else scores.argmax(dim=1)
            reconstruction = self.decoder(capsules, chosen)
        return ModelOutput(scores=scores, reconstruction=reconstruction)

    def loss(self, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        total = margin_loss(output.scores, labels, self.config).mean()
        if output.reconstruction is not None and self.config.recon_weight > 0:
            sse = (output.reconstruction.float() - images.float()).pow(2).flatten(1).sum(1).mean()
            total = total + self.config.recon_weight * sse
        return LossTerms(total=total)
