"""CapsNet with dynamic routing (Sabour, Frosst & Hinton 2017, arXiv:1710.09829).

Defaults are the paper's MNIST network; every deviation is a named option of `CapsNetConfig`.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch import nn

from models import speed_paths
from models.cpu.dft_conv import direct_only, stride2_conv_dft, worthwhile
from models.fields import ConfigError, check_fields
from models.output import LossTerms, ModelOutput
from models.registry import register
from models.routing import squash, votes_and_route
from models.routing_procedures import RoutingName
from models.routing_procedures import build as build_routing

PrimaryConv = Literal["auto", "direct", "dft"]

Count = Annotated[int, Ge(1)]


@dataclass(frozen=True)
class CapsNetConfig:
    in_channels: Count = 1
    # conv1 (9x9) and PrimaryCaps (9x9, stride 2) need at least 26 pixels
    input_size: Annotated[int, Ge(26)] = 28
    num_classes: Annotated[int, Ge(2)] = 10
    conv1_channels: Count = 256
    primary_types: Count = 32
    primary_dim: Count = 8
    digit_dim: Count = 16
    # How the primary capsules are routed to the class capsules (models/routing_procedures.py):
    # "dynamic" is the paper's Procedure 1; the others are alternatives from the literature that
    # replace only the routing, on the same W and votes.
    routing: RoutingName = "dynamic"
    routing_iters: Count = 3
    # Scale of the summed squared reconstruction error in the loss (paper: 0.0005).
    recon_weight: Annotated[float, Ge(0)] = 0.0005
    decoder: bool = True
    # Stop gradients through u_hat in all but the last routing iteration. Off in the paper and
    # the official code; some re-implementations do it, so it is an ablation flag.
    detach_inner: bool = False
    # "paper": margin loss summed over classes (the paper's formula). "official": averaged over
    # classes and halved as in the official code, which weighs reconstruction ~20x more.
    margin_convention: Literal["paper", "official"] = "paper"
    m_plus: Annotated[float, Interval(gt=0, le=1)] = 0.9
    m_minus: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    margin_lambda: Annotated[float, Ge(0)] = 0.5
    # With the softmax over parents (the paper's axis), W must start small (0.01 x randn) for
    # routing to train.
    weight_init_std: Annotated[float, Gt(0)] = 0.01
    # How the PrimaryCaps convolution is computed; not a model choice: all give the same
    # function up to float rounding. "direct": nn.Conv2d (oneDNN, cuDNN). "dft": through a small
    # DFT (models/cpu/dft_conv.py), which the CPU speed plan chooses where its training step pays
    # (bench/README.md has the factors).
    # "auto": the DFT where it is faster (training on the CPU, float32 or bf16, batch >= 48),
    # else direct.
    primary_conv: PrimaryConv = "auto"

    def __post_init__(self):
        check_fields(self)

    @property
    def primary_grid(self) -> int:
        """Side of the PrimaryCaps grid: conv1 (9x9, stride 1) then 9x9 stride 2."""
        return (self.input_size - 8 - 9) // 2 + 1

    @property
    def num_primary(self) -> int:
        return self.primary_types * self.primary_grid**2



class PrimaryCaps(nn.Module):
    """One convolution whose output channels are grouped into capsules.

    Channel t * dim + k is component k of capsule type t, so a capsule is `dim` channels at
    one grid position (not `dim` positions of one channel, a common reshape bug).
    """

    def __init__(self, in_channels: int, types: int, dim: int, method: PrimaryConv = "auto"):
        super().__init__()
        if method not in typing.get_args(PrimaryConv):
            raise ConfigError(f"primary_conv must be one of {', '.join(typing.get_args(PrimaryConv))}, got {method!r}")
        self.types, self.dim, self.method = types, dim, method
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size=9, stride=2)

    def uses_dft(self, x: torch.Tensor) -> bool:
        if direct_only():
            return False
        if self.method != "auto":
            return self.method == "dft"
        plan = speed_paths.current()
        if plan is None or plan.primary_conv is None or x.device.type != "cpu":
            return worthwhile(x)
        return plan.primary_conv == "dft" and worthwhile(x, min_batch=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_dft(x):
            out = stride2_conv_dft(x, self.conv.weight, self.conv.bias)
        else:
            out = self.conv(x)
        batch, _, height, width = out.shape
        out = out.view(batch, self.types, self.dim, height, width)
        out = out.permute(0, 1, 3, 4, 2).reshape(batch, self.types * height * width, self.dim)
        return squash(out)


class DigitCaps(nn.Module):
    """Class capsules: one (child_dim x parent_dim) matrix W_ij per (child, parent) pair, and
    routing from the primary capsules: routing-by-agreement (models/routing.py) by default, or the
    procedure `config.routing` names (models/routing_procedures.py), which may own parameters."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(
            config.weight_init_std
            * torch.randn(config.num_primary, config.num_classes, config.primary_dim, config.digit_dim)
        )
        # Dynamic routing keeps its direct call below, so its module tree, state dict and compiled
        # graph are those of the model without a routing choice.
        self.procedure = None if config.routing == "dynamic" else build_routing(
            config.routing, config.num_primary, config.num_classes, config.digit_dim, config.routing_iters)

    def forward(self, u: torch.Tensor, couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
        if self.procedure is None:
            return votes_and_route(u, self.weight, self.config.routing_iters, self.config.detach_inner, couplings)
        # forward, not __call__: PyTorch's module tracker (FlopCounterMode, which the bench uses)
        # fails on a Parameter passed to a module call under inference_mode.
        return self.procedure.forward(u, self.weight, self.config.routing_iters, self.config.detach_inner, couplings)


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


def class_targets(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """T_k of Sabour et al. 2017, eq. 4: (B,) class indices, or (B, n) for n digits in one image
    (MultiMNIST, section 6) -> (B, classes), 1 at every class present and 0 elsewhere."""
    target = torch.zeros(labels.shape[0], classes, dtype=dtype, device=labels.device)
    return target.scatter_(1, labels.reshape(labels.shape[0], -1), 1.0)


def margin_loss(lengths: torch.Tensor, labels: torch.Tensor, config: CapsNetConfig) -> torch.Tensor:
    """Per-example margin loss (Sabour et al. 2017, eq. 4):
    sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2, summed over the classes
    ("paper") or halved mean ("official"). `labels` (B,) or (B, n): every class listed is present
    (`class_targets`), so one loss serves one digit per image and MultiMNIST's pairs; a class
    listed twice is present once. Reads only the margin fields of `config` (m_plus, m_minus,
    margin_lambda, margin_convention), which every capsule classifier's config has."""
    target = class_targets(labels, lengths.shape[1], lengths.dtype)
    present = target * F.relu(config.m_plus - lengths).pow(2)
    absent = config.margin_lambda * (1 - target) * F.relu(lengths - config.m_minus).pow(2)
    per_class = present + absent
    if config.margin_convention == "official":
        return 0.5 * per_class.mean(dim=1)
    return per_class.sum(dim=1)


class CapsuleClassifier(nn.Module):
    """What a capsule classifier does with its class capsules (`capsules(images)`): the lengths
    are the class scores, the decoder (if any) reconstructs the image from the masked capsules, and
    the loss is the margin loss plus the weighted reconstruction error. Needs `config` (margin
    constants, recon_weight) and `decoder`.

    A variant changes only its hooks: `reconstruction_classes` (which capsules the decoder is fed)
    and `reconstruct` (how their images are laid out), as models/multimnist.py's two-digit CapsNet
    does; the scores, the margin loss and the reconstruction term stay these."""

    def capsules(self, images: torch.Tensor, couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def reconstruction_classes(self, scores: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The capsule the decoder reconstructs from: the true class during training, the
        predicted one at evaluation (Sabour et al. 2017, section 4.1)."""
        return labels if self.training and labels is not None else scores.argmax(dim=1)

    def reconstruct(self, capsules: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S): the image decoded from capsule `chosen` alone, every other one masked."""
        return self.decoder(capsules, chosen)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        capsules = self.capsules(images)
        # Lengths are the class scores; the norm is taken in float32 even under autocast.
        scores = torch.linalg.vector_norm(capsules.float(), dim=-1)
        reconstruction = None
        # With recon_weight 0 the decoder is not trained, so training skips its cost.
        wanted = not self.training or self.config.recon_weight > 0
        if self.decoder is not None and wanted:
            reconstruction = self.reconstruct(capsules, self.reconstruction_classes(scores, labels))
        return ModelOutput(scores=scores, reconstruction=reconstruction)

    def loss(self, output: ModelOutput, targets: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        """The paper's total loss (section 4.1): the batch-mean margin loss plus recon_weight x the
        squared error of the reconstruction against `targets` (the input images; for MultiMNIST
        each digit alone), summed over all of an example's pixels (and reconstructed digits) and
        averaged over the batch."""
        margin = margin_loss(output.scores, labels, self.config).mean()
        parts = {"margin": margin.detach()}
        total = margin
        if output.reconstruction is not None and self.config.recon_weight > 0:
            sse = (output.reconstruction.float() - targets.float()).pow(2).flatten(1).sum(1).mean()
            parts["reconstruction_sse"] = sse.detach()
            total = total + self.config.recon_weight * sse
        return LossTerms(total=total, parts=parts)


class CapsNet(CapsuleClassifier):
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


@register("capsnet", CapsNetConfig)
def build_capsnet(config: CapsNetConfig) -> CapsNet:
    return CapsNet(config)
