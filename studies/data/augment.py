"""Batched training-time augmentation that runs on the training device.

Names: `none`; `shift<N>` (random integer shift by up to N pixels on each axis with zero
padding; `shift2` is the paper's); `rotate<D>` (random rotation, uniform in +-D degrees);
`affine` (random affine with the ranges usually quoted for affNIST: rotation +-20 degrees,
shear +-0.2, per-axis scale 0.8-1.2). Everything is drawn from the caller's generator, so a
seed fixes the augmented stream.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from models.fields import ConfigError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATION_FORMS = ("none", "shift<N>", "rotate<D>", "affine")


def _uniform(low: float, high: float, count: int, like: torch.Tensor, generator: torch.Generator):
    draw = torch.rand(count, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * draw


def shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by integer (dy, dx) in [-pad, pad], filling with zeros."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (pad - dy).unsqueeze(1) + torch.arange(height, device=images.device)
    cols = (pad - dx).unsqueeze(1) + torch.arange(width, device=images.device)
    index_b = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    index_c = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[index_b, index_c, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]


@dataclass(frozen=True)
class AffineParams:
    """Per-image affine parameters (tensors of shape (batch,)); translation in pixels."""

    rotation_deg: torch.Tensor
    shear: torch.Tensor
    scale_x: torch.Tensor
    scale_y: torch.Tensor
    translate_x: torch.Tensor
    translate_y: torch.Tensor


def affine_matrices(params: AffineParams, height: int, width: int) -> torch.Tensor:
    """Forward maps (batch, 3, 3) in normalised coordinates: translate . rotate . shear . scale."""
    angle = torch.deg2rad(params.rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)

    def stack(rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    scale = stack([[params.scale_x, zeros, zeros], [zeros, params.scale_y, zeros], [zeros, zeros, ones]])
    shear = stack([[ones, params.shear, zeros], [zeros, ones, zeros], [zeros, zeros, ones]])
    # Image y points down, so a positive angle with this matrix turns the digit clockwise on
    # screen; negate to make positive angles counter-clockwise as in the usual convention.
    rotate = stack([[cos, sin, zeros], [-sin, cos, zeros], [zeros, zeros, ones]])
    translate = stack([
        [ones, zeros, 2 * params.translate_x / width],
        [zeros, ones, 2 * params.translate_y / height],
        [zeros, zeros, ones],
    ])
    return translate @ rotate @ shear @ scale


def inverse_affine(forward: torch.Tensor) -> torch.Tensor:
    """The inverses of affine maps (batch, 3, 3) whose last row is (0, 0, 1), as (batch, 2, 3):
    [A t]^-1 = [A^-1, -A^-1 t] with the 2x2 A^-1 = [[d, -b], [-c, a]] / (ad - bc).

    In closed form because torch.linalg.inv checks its result for singular matrices on the host,
    which makes every augmented batch wait for the device. Nothing is checked here: the maps of
    this module scale by at least 0.8 (and affNIST-style sets' by their drawn scales), so ad - bc
    stays far from 0."""
    a, b, c, d = forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 0], forward[:, 1, 1]
    det = a * d - b * c
    linear = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2) / det[:, None, None]
    return torch.cat([linear, -linear @ forward[:, :2, 2:]], dim=2)


def warp(images: torch.Tensor, forward: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
    """Apply forward affine maps (batch, 3, 3) with bilinear sampling and zero fill."""
    batch, channels, height, width = images.shape
    side = out_size or height
    # grid_sample wants, for each output pixel, where to read in the input: the inverse map.
    inverse = inverse_affine(forward.float())
    if side != height:
        # Output and input canvases differ: express the output grid in input units.
        inverse[:, :, :2] *= side / height
    grid = F.affine_grid(inverse.to(images.dtype), [batch, channels, side, side], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle in degrees about the centre."""
    batch = images.shape[0]
    zeros = torch.zeros(batch, device=images.device)
    ones = torch.ones(batch, device=images.device)
    params = AffineParams(degrees.to(images.device).float(), zeros, ones, ones, zeros, zeros)
    return warp(images, affine_matrices(params, *images.shape[-2:]))


def _shift_augment(max_shift: int) -> Augment:
    def augment(images, generator):
        batch = images.shape[0]
        offsets = torch.randint(-max_shift, max_shift + 1, (2, batch), generator=generator, device=images.device)
        return shift(images, offsets[0], offsets[1], max_shift)

    return augment


def _rotate_augment(max_degrees: float) -> Augment:
    def augment(images, generator):
        return rotate(images, _uniform(-max_degrees, max_degrees, images.shape[0], images, generator))

    return augment


def _affine_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    batch = images.shape[0]
    zeros = torch.zeros(batch, device=images.device)
    params = AffineParams(
        rotation_deg=_uniform(-20, 20, batch, images, generator),
        shear=_uniform(-0.2, 0.2, batch, images, generator),
        scale_x=_uniform(0.8, 1.2, batch, images, generator),
        scale_y=_uniform(0.8, 1.2, batch, images, generator),
        translate_x=zeros,
        translate_y=zeros,
    )
    return warp(images, affine_matrices(params, *images.shape[-2:]))


def parse_augmentation(name: str) -> Augment | None:
    """The augmentation called `name`, or None for `none`; unknown names raise ConfigError."""
    if name == "none":
        return None
    if name == "affine":
        return _affine_augment
    match = re.fullmatch(r"(shift|rotate)(\d+)", name)
    if match and int(match.group(2)) > 0:
        amount = int(match.group(2))
        return _shift_augment(amount) if match.group(1) == "shift" else _rotate_augment(float(amount))
    raise ConfigError(
        f"unknown augmentation {name!r}; valid forms: {', '.join(AUGMENTATION_FORMS)} (e.g. shift2, rotate30)"
    )
