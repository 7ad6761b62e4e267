"""The paper's baseline CNN (Sabour et al. 2017, section 5) and a pooled variant.

Three 5x5 stride-1 convolutions of 256, 256, 128 channels, FC 328 and 192, dropout, and a
class layer trained with cross-entropy. 'same' padding and no pooling reproduce the paper's
35.4M parameters; `pool=True` adds 2x2 max pooling after conv1 and conv2 (4.6M).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.output import LossTerms, ModelOutput
from models.registry import register


@dataclass(frozen=True)
class CNNConfig:
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    conv_channels: tuple[int, ...] = (256, 256, 128)
    fc_features: tuple[int, ...] = (328, 192)
    dropout: float = 0.5
    pool: bool = False

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_size % 4 and self.pool:
            raise ValueError(f"input_size must be a multiple of 4 with pooling, got {self.input_size}")


class BaselineCNN(nn.Module):
    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels, side = config.in_channels, config.input_size
        for index, out_channels in enumerate(config.conv_channels):
            layers += [nn.Conv2d(channels, out_channels, kernel_size=5, padding=2), nn.ReLU(inplace=True)]
            if config.pool and index < 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out_channels
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = []
        features = channels * side * side
        for width in config.fc_features:
            fc += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            features = width
        fc += [nn.Dropout(config.dropout), nn.Linear(features, config.num_classes)]
        self.classifier = nn.Sequential(*fc)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(scores=self.classifier(self.features(images).flatten(1)))

    def loss(self, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        total = F.cross_entropy(output.scores.float(), labels)
        return LossTerms(total=total, parts={"cross_entropy": total.detach()})


@register("cnn_paper", CNNConfig)
def build_cnn_paper(config: CNNConfig) -> BaselineCNN:
    return BaselineCNN(config)


@dataclass(frozen=True)
class PooledCNNConfig(CNNConfig):
    pool: bool = True


@register("cnn_pool", PooledCNNConfig)
def build_cnn_pool(config: PooledCNNConfig) -> BaselineCNN:
    return BaselineCNN(config)
