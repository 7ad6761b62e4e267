"""A model of your own, registered from your own module: `imports = ["my_mlp"]` in a spec beside
this file makes `my_mlp` a model of the study (see my_study.toml and the README)."""
from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

import models
from models import LossTerms, ModelOutput


@dataclass(frozen=True)
class MLPConfig:
    # The trainer sets these three from the dataset (and the canvas of expanded MNIST).
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    # Your options: annotations say what a spec or the command line may set.
    hidden: Annotated[int, Ge(1)] = 64


class MLP(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(config.in_channels * config.input_size**2, config.hidden),
                                 nn.ReLU(), nn.Linear(config.hidden, config.num_classes))

    def forward(self, images, labels=None) -> ModelOutput:
        return ModelOutput(scores=self.net(images))  # class scores: their argmax is the prediction

    def loss(self, output: ModelOutput, images, labels) -> LossTerms:
        total = F.cross_entropy(output.scores.float(), labels)
        return LossTerms(total=total, parts={"cross_entropy": total.detach()})


@models.register("my_mlp", MLPConfig)
def build(config: MLPConfig) -> MLP:
    return MLP(config)
