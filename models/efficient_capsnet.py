"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021, "Efficient-CapsNet: capsule network with
self-attention routing", Sci. Rep. 11:14634), the authors' MNIST network.

Layers, as in the authors' code (EscVM/Efficient-CapsNet, models/efficient_capsnet_graph_mnist.py):
  Conv 5x5 32 -> Conv 3x3 64 -> Conv 3x3 64 -> Conv 3x3 128 stride 2, all 'valid', each followed by
  ReLU and then BatchNorm (the convolutions carry the ReLU and BatchNorm comes after, in that order);
  PrimaryCaps: a depthwise convolution (128 channels, one filter per channel, kernel = the remaining
  grid side, 9 at 28x28) whose 128 outputs are 16 capsules of dimension 8, squashed by
  (1 - exp(-|s|)) s / |s|;
  FCCaps: 16 -> 10 capsules of dimension 16 by self-attention routing
  (models/routing_procedures.py, "self_attention"), with the same squash;
  class scores: the capsule lengths; margin loss (m+ 0.9, m- 0.1, lambda 0.5, summed over classes).

Parameters: 161,824 trainable without the decoder, the paper's count, which excludes the decoder;
`decoder=False` turns it off. The decoder is CapsNet's (FC 512, FC 1024, FC pixels, models/capsnet.py)
fed the masked class capsules, as in the authors' code (1,411,344 more parameters at 28x28).

Initialisation follows the authors' Keras layers: he_normal (truncated normal, std sqrt(2 / fan_in))
for the four convolutions, W and the decoder's hidden layers, glorot_normal for the decoder's output
layer, Keras's default glorot_uniform for the depthwise PrimaryCaps convolution, zero biases;
BatchNorm with Keras's eps 1e-3 and momentum 0.99 (PyTorch's momentum 0.01).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from annotated_types import Ge, Interval
from torch import nn

from models.capsnet import CapsuleClassifier, Decoder
from models.fields import check_fields
from models.registry import register
from models.routing_procedures import SelfAttentionRouting

Count = Annotated[int, Ge(1)]

# Keras's truncated normal cuts at two standard deviations and divides the std by this factor (the
# std of a unit normal truncated to [-2, 2]) so that the truncated draw keeps the intended variance.
_TRUNCATED_STD = 0.87962566103423978


@dataclass(frozen=True)
class EfficientCapsNetConfig:
    in_channels: Count = 1
    # The four valid convolutions (5, 3, 3 and 3 with stride 2) need 11 pixels for a 1x1 grid.
    input_size: Annotated[int, Ge(11)] = 28
    num_classes: Annotated[int, Ge(2)] = 10
    decoder: bool = True
    # Scale of the summed squared reconstruction error in the loss. The authors weigh Keras's 'mse'
    # (the mean over an image's 784 pixels) by 0.392, which is 0.392 / 784 = 0.0005 on the sum.
    recon_weight: Annotated[float, Ge(0)] = 0.0005
    # "paper": margin loss summed over classes, as the authors' marginLoss; "official": CapsNet's
    # official-code convention (see CapsNetConfig).
    margin_convention: Literal["paper", "official"] = "paper"
    m_plus: Annotated[float, Interval(gt=0, le=1)] = 0.9
    m_minus: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    margin_lambda: Annotated[float, Ge(0)] = 0.5

    # The authors' architecture, not options.
    conv_channels: ClassVar[tuple[int, ...]] = (32, 64, 64, 128)
    primary_capsules: ClassVar[int] = 16
    primary_dim: ClassVar[int] = 8
    digit_dim: ClassVar[int] = 16

    def __post_init__(self):
        check_fields(self)

    @property
    def primary_grid(self) -> int:
        """Side of the grid the depthwise PrimaryCaps convolution covers: 9 at 28x28."""
        return (self.input_size - 4 - 2 - 2 - 3) // 2 + 1


def efficient_squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-20) -> torch.Tensor:
    """(1 - exp(-|s|)) s / |s| (paper, eq. for the PrimaryCaps and FCCaps squash): the length in
    [0, 1) approaches 1 faster than Sabour et al.'s |s|^2 / (1 + |s|^2) for small |s|."""
    norm = torch.sqrt(s.pow(2).sum(dim=dim, keepdim=True) + eps)
    return -torch.expm1(-norm) * s / norm


def he_normal_(weight: torch.Tensor, fan_in: int, gain: float = 2.0) -> None:
    std = math.sqrt(gain / fan_in) / _TRUNCATED_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def keras_init_(layer: nn.Conv2d | nn.Linear, kind: Literal["he_normal", "glorot_normal", "glorot_uniform"]) -> None:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    if kind == "he_normal":
        he_normal_(layer.weight, fan_in)
    elif kind == "glorot_normal":  # std sqrt(2 / (fan_in + fan_out))
        he_normal_(layer.weight, fan_in + fan_out)
    else:  # the same fans as Keras's, also for a grouped convolution
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class PrimaryCaps(nn.Module):
    """Depthwise convolution over the whole remaining grid: channel 8n + k is component k of
    capsule n (the authors' Keras reshape of the 1x1x128 output)."""

    def __init__(self, config: EfficientCapsNetConfig):
        super().__init__()
        channels = config.conv_channels[-1]
        self.capsules, self.dim = config.primary_capsules, config.primary_dim
        self.conv = nn.Conv2d(channels, channels, kernel_size=config.primary_grid, groups=channels)
        keras_init_(self.conv, "glorot_uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return efficient_squash(self.conv(x).reshape(x.shape[0], self.capsules, self.dim))


class FCCaps(nn.Module):
    """Fully connected capsules: W (children, parents, child_dim, dim) and self-attention routing
    with its learned prior (shape (parents, children))."""

    def __init__(self, children: int, parents: int, child_dim: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(children, parents, child_dim, dim))
        # Keras counts the (parents, children) axes of the authors' 4-d kernel as its receptive field.
        he_normal_(self.weight, children * parents * child_dim)
        self.routing = SelfAttentionRouting(children, parents, dim, 1, squash_fn=efficient_squash)

    def forward(self, u: torch.Tensor, couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
        # forward, not __call__: PyTorch's module tracker (FlopCounterMode, which the bench uses)
        # fails on a Parameter passed to a module call under inference_mode.
        return self.routing.forward(u, self.weight, 1, False, couplings)


class EfficientCapsNet(CapsuleClassifier):
    def __init__(self, config: EfficientCapsNetConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for index, out_channels in enumerate(config.conv_channels):
            last = index == len(config.conv_channels) - 1
            conv = nn.Conv2d(channels, out_channels, kernel_size=3 if index else 5, stride=2 if last else 1)
            keras_init_(conv, "he_normal")
            layers += [conv, nn.ReLU(inplace=True), nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.primary = PrimaryCaps(config)
        self.digits = FCCaps(config.primary_capsules, config.num_classes, config.primary_dim, config.digit_dim)
        self.decoder = Decoder(config) if config.decoder else None
        if self.decoder is not None:
            linears = [m for m in self.decoder.net if isinstance(m, nn.Linear)]
            for layer in linears:
                keras_init_(layer, "glorot_normal" if layer is linears[-1] else "he_normal")

    def capsules(self, images: torch.Tensor, couplings: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Class capsule vectors v_j: (batch, classes, digit_dim)."""
        return self.digits(self.primary(self.features(images)), couplings)


@register("efficient_capsnet", EfficientCapsNetConfig)
def build_efficient_capsnet(config: EfficientCapsNetConfig) -> EfficientCapsNet:
    return EfficientCapsNet(config)
