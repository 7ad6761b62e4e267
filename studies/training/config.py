"""Typed configuration of one training run. Defaults follow the official code (Sarasra/models, research/capsules: Adam 1e-3, decay 0.96 every 2000 steps).

Each field's type and range is in its annotation; `check_fields` (models/fields.py) judges every
value against it, whether it comes from Python, a spec file or the command line."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt, Interval
from pydantic import AfterValidator

from models.fields import check_fields
from studies.data.augment import parse_augmentation
from studies.data.datasets import DATASETS


def _known_augmentation(name: str) -> str:
    parse_augmentation(name)  # ValueError naming the valid forms
    return name


def _device_name(name: str) -> str:
    if name != "auto":
        try:
            torch.device(name)
        except RuntimeError:
            raise ValueError(f"not a device name (auto, cpu, cuda, cuda:1, ...): {name!r}") from None
    return name


Dataset = Literal[tuple(DATASETS)]
Device = Annotated[str, AfterValidator(_device_name)]
Augmentation = Annotated[str, AfterValidator(_known_augmentation)]
Count = Annotated[int, Ge(1)]


@dataclass
class TrainConfig:
    model: str = "capsnet"
    # Options of the model's config dataclass (e.g. routing_iters, recon_weight, detach_inner).
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: Dataset = "mnist"
    augmentation: Augmentation = "shift2"
    # Expanded MNIST: place each digit at a random position on a canvas x canvas black image
    # (a fresh position per batch; a fixed, seeded one for the validation and test sets).
    # 0 keeps the native size.
    canvas: Literal[0] | Annotated[int, Ge(28)] = 0
    epochs: Count = 1
    # Training, validation and test images are seeded class-stratified random subsets
    # (studies/data/subsets.py), the same for every trial of a `split_seed`: `train_size` of the
    # training images left after the validation split (None: all of them) ...
    train_size: Count | None = None
    # ... `val_size` held out from the training images, disjoint from the training split: the
    # per-epoch validation accuracy, and the only split on which a study chooses anything ...
    val_size: Annotated[int, Ge(0)] = 0
    # ... and `test_size` of the test images (None: the whole test set).
    test_size: Count | None = None
    split_seed: Annotated[int, Ge(0)] = 0
    batch_size: Count = 128
    lr: Annotated[float, Gt(0)] = 1e-3
    # Exponential decay per step, lr * decay ** (step / decay_steps), not staircase.
    lr_decay: Annotated[float, Interval(gt=0, le=1)] = 0.96
    lr_decay_steps: Count = 2000
    seed: Annotated[int, Ge(0)] = 0
    device: Device = "auto"
    # bf16 autocast: on CUDA, or on a CPU with AMX or AVX512-BF16 (refused on other CPUs, where
    # bf16 is emulated and slower). Routing and the capsule lengths stay float32.
    bf16: bool = False
    # torch.compile of the model and loss for the training step (evaluation runs the module as it
    # is): "auto" compiles on CUDA, where a step is short enough for kernel launches to matter
    # (`make gpu-check` times it), not on the CPU, where the step is long and a compilation's
    # cost is not repaid by a short run (bench/README.md); "on" and "off" decide it everywhere.
    compile: Literal["auto", "on", "off"] = "auto"
    # Deterministic algorithms: torch.use_deterministic_algorithms and, on CUDA, cuDNN's
    # deterministic kernels instead of the fastest ones it finds by timing (cudnn.benchmark), so
    # the same run gives the same bits on the same GPU. The CPU path is deterministic anyway.
    deterministic: bool = False
    # Epochs between the checkpoints a run resumes from (with `checkpoint`): each is the full
    # training state (about 100 MB for CapsNet, 425 MB with Adam for cnn_paper), which a fast GPU
    # epoch should not wait for every time.
    checkpoint_every: Count = 1
    eval_batch_size: Count = 500
    data_root: str | None = None
    progress: bool = True

    def __post_init__(self):
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
