"""Two-digit models for MultiMNIST (Sabour, Frosst & Hinton 2017, section 6) and their metrics.

Contract of a multi-label model (class attribute `labels_per_example = 2`, also on its config
class, so a caller can tell from the registry without building one):
  - `forward(images (B, C, S, S), labels (B, 2) int64 or None) -> ModelOutput`: `scores`
    (B, classes), larger = more present; `reconstruction` (B, 2, C, S, S) or None, slot k being
    the reconstruction of digit k (of `labels[:, k]` when labels are given).
  - `loss(output, targets (B, 2, C, S, S) float in [0, 1], labels (B, 2)) -> LossTerms`:
    `targets[:, k]` is digit k alone on the canvas (MultiMNISTSet.first / .second, scaled like
    the images). It takes the place of the single-label models' `loss(output, images, labels)`.
  - `predict_pair(scores) -> (B, 2)`: the two classes with the largest scores, larger first.
Metrics: `pair_correct` (both digits found, in either order: the paper's MultiMNIST accuracy)
and `digit_correct` (each true digit found among the two predicted).

`capsnet_multi`: the paper's CapsNet at 36x36 (models/capsnet.py's layers, forward and margin loss,
unchanged: only which capsules are reconstructed, and how, differ), 11,361,808
parameters with the decoder (paper: 11.36M). `cnn_multi`: the official code's MultiMNIST
baseline (research/capsules/models/conv_model.py: conv 512@5x5 SAME + ReLU + 2x2 max pool, conv
256@5x5 SAME + ReLU + 2x2 max pool, FC 1024 ReLU, 10 outputs), 24,535,306 parameters at 36x36
(paper: 24.56M; 0.10% under), built by models/cnn.py's BaselineCNN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval, MinLen

from models.capsnet import CapsNet, CapsNetConfig, class_targets
from models.cnn import BaselineCNN, CNNConfig
from models.output import LossTerms, ModelOutput
from models.registry import register

# The MultiMNIST canvas: 28x28 digits padded by 4 (studies/data/multimnist.py's CANVAS; the
# models layer does not import the data layer, a test checks the two agree).
MULTIMNIST_SIDE = 36
LABELS_PER_EXAMPLE = 2
Count = Annotated[int, Ge(1)]


# --- predictions and metrics ------------------------------------------------------------------


def predict_pair(scores: torch.Tensor) -> torch.Tensor:
    """(B, classes) -> int64 (B, 2): the two highest-scoring classes, the higher first."""
    return scores.topk(LABELS_PER_EXAMPLE, dim=1).indices


def pair_correct(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool (B,): both true digits identified, in either order (the paper counts an example as
    correct only then). Comparing the sorted pairs also refuses a prediction that names one
    class twice."""
    return (pred.sort(dim=1).values == labels.sort(dim=1).values).all(dim=1)


def digit_correct(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool (B, 2): whether each true digit `labels[:, k]` is among the predicted two; its mean
    is the per-digit accuracy."""
    return (labels.unsqueeze(2) == pred.unsqueeze(1)).any(dim=2)


def two_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 2) class indices -> (B, classes) with 1 at both (T_k = 1 for k in the pair)."""
    return class_targets(labels, classes, dtype)


def _check_labels(labels: torch.Tensor) -> None:
    # Shape checks only: they read metadata, so they never wait for the device.
    if labels.ndim != 2 or labels.shape[1] != LABELS_PER_EXAMPLE:
        raise ValueError(f"multi-label models take labels shaped (B, {LABELS_PER_EXAMPLE}), got {tuple(labels.shape)}")


# --- CapsNet --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapsNetMultiConfig(CapsNetConfig):
    """CapsNetConfig (every option and check of the MNIST network) at the 36x36 canvas."""

    labels_per_example: ClassVar[int] = LABELS_PER_EXAMPLE
    input_size: Annotated[int, Ge(26)] = MULTIMNIST_SIDE
    # Which two capsules are reconstructed in evaluation. "predicted": the two longest, as the
    # paper does at test time. "true": the labels' (when given), as the official code does in
    # training and evaluation alike; a named deviation for comparing against that code.
    eval_reconstruction: Literal["predicted", "true"] = "predicted"


def align_to_labels(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reorder each predicted pair so that a correctly predicted class sits in its label's slot,
    so that slot k is compared with digit k's image. Pairs with no class in common keep their
    order (larger score first). Elementwise: no host synchronisation."""
    swap = (pred[:, 0] == labels[:, 1]) | (pred[:, 1] == labels[:, 0])
    return torch.where(swap.unsqueeze(1), pred.flip(1), pred)


def reconstruction_classes(
    scores: torch.Tensor, labels: torch.Tensor | None, training: bool, eval_reconstruction: str = "predicted"
) -> torch.Tensor:
    """(B, 2): the capsule each reconstruction slot is decoded from. Training: the true labels
    (paper, 4.1). Evaluation: the two longest capsules, aligned to the labels' order when they
    are given (`align_to_labels`); with eval_reconstruction="true", the labels themselves."""
    if labels is not None and (training or eval_reconstruction == "true"):
        return labels
    pred = predict_pair(scores)
    return pred if labels is None else align_to_labels(pred, labels)


class CapsNetMulti(CapsNet):
    """CapsNet whose two longest digit capsules are the prediction and which reconstructs each
    digit of the pair from its own capsule (every other capsule masked). The forward, the margin
    loss (models.capsnet.margin_loss with both classes of the pair present, section 6) and the
    reconstruction term are CapsNet's; this class adds the label checks and the two hooks."""

    labels_per_example = LABELS_PER_EXAMPLE
    predict_pair = staticmethod(predict_pair)

    def reconstruction_classes(self, scores: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return reconstruction_classes(scores, labels, self.training, self.config.eval_reconstruction)

    def reconstruct(self, capsules: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """capsules (B, classes, dim), chosen (B, 2) -> (B, 2, C, S, S). Both digits go through
        the one decoder as a batch of 2B (the decoder masks all capsules but the chosen one)."""
        batch, classes, dim = capsules.shape
        stacked = capsules.unsqueeze(1).expand(batch, LABELS_PER_EXAMPLE, classes, dim).reshape(-1, classes, dim)
        images = super().reconstruct(stacked, chosen.reshape(-1))
        return images.view(batch, LABELS_PER_EXAMPLE, *images.shape[1:])

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        if labels is not None:
            _check_labels(labels)
        return super().forward(images, labels)

    def loss(self, output: ModelOutput, targets: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        """CapsNet's loss with both digits of the pair present in the margin loss and the squared
        errors of both reconstructions summed per example (paper: weight 0.0005)."""
        _check_labels(labels)
        if output.reconstruction is not None and self.config.recon_weight > 0:
            if targets.shape != output.reconstruction.shape:
                raise ValueError(
                    f"targets shaped {tuple(targets.shape)}, expected {tuple(output.reconstruction.shape)} "
                    "(each digit alone, float in [0, 1])"
                )
            if not targets.is_floating_point():
                raise TypeError(f"targets must be float images in [0, 1] like the inputs, got {targets.dtype}")
        return super().loss(output, targets, labels)


@register("capsnet_multi", CapsNetMultiConfig)
def build_capsnet_multi(config: CapsNetMultiConfig) -> CapsNetMulti:
    return CapsNetMulti(config)


# --- CNN baseline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CNNMultiConfig(CNNConfig):
    """The official code's MultiMNIST baseline; CNNConfig's options (channels_last among them).

    Deviations from that code, each a default here: PyTorch's default initialisation (the
    official code draws truncated normals), and the loss (below). No dropout (the official
    baseline has none); `dropout` stays available.
    """

    labels_per_example: ClassVar[int] = LABELS_PER_EXAMPLE
    input_size: Count = MULTIMNIST_SIDE
    conv_channels: Annotated[tuple[Count, ...], MinLen(1)] = (512, 256)
    fc_features: tuple[Count, ...] = (1024,)
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    pool: bool = True
    # The paper's section 6 does not say how its baseline is trained on two digits. "bce": one
    # independent sigmoid per class, binary cross-entropy against the two-hot target, summed over
    # the classes and averaged over the batch (the likelihood of the label set). "official_sigmoid":
    # the official code's 'sigmoid' loss for two targets: target two-hot / 2 (0.5 on each present
    # class), averaged over classes and batch. Either way the two largest logits are the prediction.
    loss: Literal["bce", "official_sigmoid"] = "bce"


class CNNMulti(BaselineCNN):
    """BaselineCNN (conv, pool, FC layers, channels_last) with a two-label loss."""

    labels_per_example = LABELS_PER_EXAMPLE
    predict_pair = staticmethod(predict_pair)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        if labels is not None:
            _check_labels(labels)
        return super().forward(images, labels)

    def loss(self, output: ModelOutput, targets: torch.Tensor, labels: torch.Tensor) -> LossTerms:
        """Binary cross-entropy of the class logits (`targets`, the digit images, are unused)."""
        _check_labels(labels)
        logits = output.scores.float()
        target = two_hot(labels, logits.shape[1])
        if self.config.loss == "official_sigmoid":
            total = F.binary_cross_entropy_with_logits(logits, target / 2)
        else:
            total = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()
        return LossTerms(total=total, parts={"binary_cross_entropy": total.detach()})


@register("cnn_multi", CNNMultiConfig)
def build_cnn_multi(config: CNNMultiConfig) -> CNNMulti:
    return CNNMulti(config)
