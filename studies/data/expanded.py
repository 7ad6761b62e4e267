"""Expanded MNIST (the paper's affNIST protocol): 28x28 digits placed at random on a 40x40 canvas.

Placement is an integer offset drawn uniformly over every position where the whole image
fits, so no pixel is cut or resampled. Training draws fresh offsets per batch on the device
from the caller's generator; the test set uses fixed offsets from a seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from studies.data.augment import shift

CANVAS = 40


def place_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, canvas: int = CANVAS) -> torch.Tensor:
    """Put each (B, C, H, W) image on a zero canvas x canvas frame with its top-left at (top, left)."""
    height, width = images.shape[-2:]
    if height > canvas or width > canvas:
        raise ValueError(f"images of {height}x{width} do not fit on a {canvas}x{canvas} canvas")
    room = canvas - min(height, width)
    # Image at the top-left corner, then the shared batched integer shift moves it into place;
    # offsets never exceed the free room, so nothing is shifted off the canvas.
    cornered = F.pad(images, (0, canvas - width, 0, canvas - height))
    return shift(cornered, top.to(images.device), left.to(images.device), room)


def place_on_canvas(images: torch.Tensor, generator: torch.Generator, canvas: int = CANVAS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, canvas, canvas), each image at a uniform random integer position."""
    height, width = images.shape[-2:]
    if height > canvas or width > canvas:
        raise ValueError(f"images of {height}x{width} do not fit on a {canvas}x{canvas} canvas")
    batch = images.shape[0]
    top = torch.randint(0, canvas - height + 1, (batch,), generator=generator, device=generator.device)
    left = torch.randint(0, canvas - width + 1, (batch,), generator=generator, device=generator.device)
    return place_at(images, top, left, canvas)


def expanded_test_set(images_uint8: torch.Tensor, seed: int, canvas: int = CANVAS) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, canvas, canvas) uint8 at positions fixed by `seed` (same on every run)."""
    if images_uint8.ndim != 3 or images_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 (N, H, W) images, got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    # A CPU generator keeps the offsets identical whatever device the model later uses.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return place_on_canvas(images_uint8.cpu().unsqueeze(1), generator, canvas).squeeze(1)


__all__ = ["CANVAS", "expanded_test_set", "place_at", "place_on_canvas"]
