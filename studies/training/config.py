"""Typed configuration of one training run. Defaults follow the official code (REFERENCES.md 2)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from studies.data.augment import parse_augmentation


@dataclass
class TrainConfig:
    model: str = "capsnet"
    # Options of the model's config dataclass (e.g. routing_iters, recon_weight, detach_inner).
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    augmentation: str = "shift2"
    # Expanded MNIST: place each digit at a random position on a canvas x canvas black image
    # (a fresh position per batch; a fixed, seeded one for the validation and test sets).
    # 0 keeps the native size.
    canvas: int = 0
    epochs: int = 1
    # The first `train_size` training images (None: all but the validation hold-out).
    train_size: int | None = None
    # Held out from the END of the training set, used for per-epoch validation accuracy.
    val_size: int = 0
    # The first `test_size` test images (None: the whole test set).
    test_size: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    # Exponential decay per step, lr * decay ** (step / decay_steps), not staircase.
    lr_decay: float = 0.96
    lr_decay_steps: int = 2000
    seed: int = 0
    device: str = "auto"
    # bf16 autocast: on CUDA, or on a CPU with AMX or AVX512-BF16 (refused on other CPUs, where
    # bf16 is emulated and slower). Routing and the capsule lengths stay float32.
    bf16: bool = False
    eval_batch_size: int = 500
    data_root: str | None = None
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.train_size is None or self.train_size >= 1, f"train_size must be >= 1, got {self.train_size}"),
            (self.val_size >= 0, f"val_size must be >= 0, got {self.val_size}"),
            (self.test_size is None or self.test_size >= 1, f"test_size must be >= 1, got {self.test_size}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (self.lr_decay_steps >= 1, f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}"),
            (self.canvas == 0 or self.canvas >= 28, f"canvas must be 0 or >= 28, got {self.canvas}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        parse_augmentation(self.augmentation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
