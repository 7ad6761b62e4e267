"""A split of a data set as training and evaluation read it (`Split`): images and labels on the
training device, what its model reconstructs, and the rule by which an example counts as right.
The rule travels with the split because the data set, not the training loop, knows what its labels
mean: one class per image here by default, a pair of digits on MultiMNIST (the task passes that rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# (scores (B, classes), labels) -> bool, one per example; evaluation reads a rule that returns one
# per label, (B, k), as the fraction of labels found.
CorrectRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def top_class_correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool (B,): the highest-scoring class is the label (one label per example)."""
    if labels.ndim != 1:
        # A shape check reads metadata only: it never waits for the device.
        raise ValueError(f"labels shaped {tuple(labels.shape)}: a split whose examples carry several labels "
                         "needs its own `correct` rule")
    return scores.argmax(dim=1) == labels


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and int64 labels (N,), both on the training device. A
    two-digit set (MultiMNIST) has labels (N, 2) and, as `targets`, each digit alone
    (N, 2, C, H, W) uint8: what its model reconstructs. Without targets a model reconstructs its
    input. `correct` says which examples the model's scores get right (`CorrectRule`)."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None
    correct: CorrectRule = top_class_correct

    def __len__(self) -> int:
        return self.labels.shape[0]
