"""What every model hands to the trainer, so one training and evaluation path serves all."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    # Class scores whose argmax is the prediction: capsule lengths for CapsNet, logits for CNNs.
    scores: torch.Tensor
    # Decoder output in image layout, when the model has a decoder.
    reconstruction: torch.Tensor | None = None


@dataclass
class LossTerms:
    total: torch.Tensor
    # Detached named parts of the total (e.g. margin, reconstruction), kept as tensors so
    # logging does not force a device synchronisation every step.
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
