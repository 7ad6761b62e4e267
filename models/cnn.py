"""The paper's baseline CNN (Sabour et al. 2017, section 5) and a pooled variant.

Three 5x5 stride-1 convolutions of 256, 256, 128 channels, FC 328 and 192, dropout, and a
class layer trained with cross-entropy. 'same' padding and no pooling reproduce the paper's
35.4M parameters; `pool=True` adds 2x2 max pooling after conv1 and conv2 (4.6M).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval, MinLen
from torch import nn

from models.fields import ConfigError, check_fields
from models.output import LossTerms, ModelOutput
from models.registry import register

Count = Annotated[int, Ge(1)]


@dataclass(frozen=True)
class CNNConfig:
    in_channels: Count = 1
    input_size: Count = 28
    num_classes: Annotated[int, Ge(2)] = 10
    conv_channels: Annotated[tuple[Count, ...], MinLen(1)] = (256, 256, 128)
    fc_features: tuple[Count, ...] = (328, 192)
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.5
    pool: bool = False
    # Memory layout only (the same function): NHWC activations and weights, the layout oneDNN's
    # bf16 convolutions and max pooling have their fast kernels for (bench/README.md).
    channels_last: bool = True

    def __post_init__(self):
        check_fields(self)
        if self.input_size % 4 and self.pool:
            raise ConfigError(f"input_size must be a multiple of 4 with pooling, got {self.input_size}")


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
        if config.channels_last:
            self.features.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # flatten keeps the (channel, row, column) order of the features whatever their layout
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
