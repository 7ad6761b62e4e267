"""A generated affNIST-style set: MNIST digits on a 40x40 canvas under random affine maps.

Stand-in for the official affNIST files (studies/data/affnist.py) when they are absent. It is
called "affNIST-style (generated)" everywhere, with its ranges and seed recorded; only the
official files may be called affNIST.

Each image gets rotation, shear and per-axis scale drawn uniformly from `AffineRanges`
(the ranges usually quoted for affNIST by default), then a translation drawn uniformly from
the interval that keeps the whole transformed digit inside the frame. "Inside" is
conservative: the region where bilinear sampling can give a nonzero value (the digit's
nonzero box grown by one source pixel) must stay within the centres of the outermost canvas
pixels, so the border rows and columns stay zero and no mass is cut off.

Parameters are drawn on the CPU from one seeded generator, copy block after copy block, so
the set is the same for any chunk size or device, and the first k copies of a set with more
copies equal the set with k copies. Warping runs batched on the requested device.

Caching (file layout, identity, damaged files) is studies/data/generated_cache.py's; this module
says only what identifies a set and how its file's payload is laid out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from studies.data import generated_cache
from studies.data.augment import AffineParams, affine_matrices, warp
from studies.data.generated_cache import source_fingerprint

DESCRIPTION = "affNIST-style (generated)"
CANVAS = 40
# Bump when the generation changes in a way that alters the output, so old caches rebuild.
# 2: warp inverts the affine maps in closed form (studies/data/augment.py), not by torch.linalg.inv;
# 155 of 32M pixels of a 20k-image set moved by one grey level.
GENERATOR_VERSION = 2
CACHE_FOLDER = "affnist_style"
_CHUNK = 4096
_PARAM_NAMES = tuple(f.name for f in fields(AffineParams))


@dataclass(frozen=True)
class AffineRanges:
    """Uniform ranges: rotation in +-rotation_deg, shear in +-shear, each axis scale in [scale_min, scale_max]."""

    rotation_deg: float = 20.0
    shear: float = 0.2
    scale_min: float = 0.8
    scale_max: float = 1.2

    def __post_init__(self) -> None:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AffineRanges.{name} must be a finite number, got {value!r}")
        if not 0 <= self.rotation_deg <= 180:
            raise ValueError(f"AffineRanges.rotation_deg must be in 0..180, got {self.rotation_deg}")
        if self.shear < 0:
            raise ValueError(f"AffineRanges.shear must be >= 0, got {self.shear}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"AffineRanges needs 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}


# eq=False: field-wise == on tensors is ambiguous; compare the tensors with torch.equal.
@dataclass(frozen=True, eq=False)
class AffineStyleSet:
    """Generated images with everything needed to reproduce and label them honestly.

    `params` holds the per-image forward maps (translation in pixels, about the canvas
    centre); `source_index[m]` is the original image that image m was made from.
    """

    images: torch.Tensor  # uint8 (M, canvas, canvas)
    labels: torch.Tensor  # int64 (M,)
    params: AffineParams
    source_index: torch.Tensor  # int64 (M,)
    ranges: AffineRanges
    seed: int
    copies: int
    canvas: int
    source_sha256: str
    clipped: int  # images whose digit could not fit and was centred instead (0 for MNIST)
    description: str = DESCRIPTION

    def metadata(self) -> dict[str, object]:
        """JSON-able record for reports and the cache."""
        return {
            "description": self.description,
            "ranges": self.ranges.as_dict(),
            "seed": self.seed,
            "copies": self.copies,
            "canvas": self.canvas,
            "source_images": int(self.images.shape[0] // max(self.copies, 1)),
            "source_sha256": self.source_sha256,
            "images": int(self.images.shape[0]),
            "clipped": self.clipped,
            "generator_version": GENERATOR_VERSION,
        }


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, copies: int, canvas: int) -> None:
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, S, S), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected ({images.shape[0]},)")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive integer, got {copies!r}")
    if canvas < images.shape[1]:
        raise ValueError(f"canvas {canvas} is smaller than the {images.shape[1]}-pixel source images")


def _draw(ranges: AffineRanges, count: int, copies: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image draws (rotation, shear, scales) and translation fractions in [0, 1)^2."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)

    blocks, fractions = [], []
    for _ in range(copies):  # copy blocks in order: a prefix of copies is a smaller set
        blocks.append(torch.stack([
            uniform(-ranges.rotation_deg, ranges.rotation_deg),
            uniform(-ranges.shear, ranges.shear),
            uniform(ranges.scale_min, ranges.scale_max),
            uniform(ranges.scale_min, ranges.scale_max),
        ]))
        fractions.append(torch.rand(2, count, generator=generator, dtype=torch.float64))
    drawn = torch.cat(blocks, dim=1)
    names = ("rotation_deg", "shear", "scale_x", "scale_y")
    return {name: drawn[i] for i, name in enumerate(names)}, torch.cat(fractions, dim=1)


def _support_boxes(images: torch.Tensor) -> torch.Tensor:
    """(N, 4) x_min, x_max, y_min, y_max of where bilinear sampling can be nonzero.

    Coordinates are in pixels from the image centre; the nonzero pixels' centres grown by
    one pixel (bilinear weights vanish at distance 1). Empty images get a point at the centre.
    """
    side = images.shape[-1]
    mask = images > 0
    cols, rows = mask.any(dim=1), mask.any(dim=2)  # (N, side) each

    def extent(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = hit.to(torch.uint8).argmax(dim=1)
        last = side - 1 - hit.flip(1).to(torch.uint8).argmax(dim=1)
        return first.double() + 0.5 - side / 2 - 1, last.double() + 0.5 - side / 2 + 1

    x_lo, x_hi = extent(cols)
    y_lo, y_hi = extent(rows)
    boxes = torch.stack([x_lo, x_hi, y_lo, y_hi], dim=1)
    empty = ~cols.any(dim=1)
    return torch.where(empty.unsqueeze(1), torch.zeros_like(boxes), boxes)


def _translations(linear: torch.Tensor, boxes: torch.Tensor, fractions: torch.Tensor, canvas: int):
    """Translations (pixels) drawn within the range that keeps each support box on the canvas.

    Returns (tx, ty, fits); where a box is too big to fit, the translation centres it.
    """
    x_lo, x_hi, y_lo, y_hi = boxes.unbind(dim=1)
    corners = torch.stack([
        torch.stack([x_lo, y_lo], dim=1), torch.stack([x_hi, y_lo], dim=1),
        torch.stack([x_lo, y_hi], dim=1), torch.stack([x_hi, y_hi], dim=1),
    ], dim=2)  # (M, 2, 4)
    moved = linear @ corners
    low, high = moved.amin(dim=2), moved.amax(dim=2)  # (M, 2)
    # Centres of the outermost canvas pixels; the support may touch them, where weights are 0.
    edge = canvas / 2 - 0.5
    t_min, t_max = -edge - low, edge - high
    fits = (t_max >= t_min).all(dim=1)
    width = (t_max - t_min).clamp(min=0)
    centred = (t_min + t_max) / 2
    t = torch.where(fits.unsqueeze(1), t_min + fractions.T * width, centred)
    return t[:, 0], t[:, 1], fits


def _float32_params(params: dict[str, torch.Tensor]) -> AffineParams:
    return AffineParams(**{name: params[name].float() for name in _PARAM_NAMES})


def generate(
    images: torch.Tensor,
    labels: torch.Tensor,
    ranges: AffineRanges = AffineRanges(),
    copies: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    canvas: int = CANVAS,
) -> AffineStyleSet:
    """Make `copies` random affine copies of each uint8 (N, S, S) image on a canvas x canvas frame.

    Output (on the CPU) is ordered copy block by copy block: image m comes from source
    m % N. Same inputs, ranges, seed and copies give bit-identical results on a device.
    """
    _check_inputs(images, labels, copies, canvas)
    count, side = images.shape[0], images.shape[1]
    params, fractions = _draw(ranges, count, copies, seed)
    zeros = torch.zeros(count * copies, dtype=torch.float64)
    linear_params = AffineParams(**params, translate_x=zeros, translate_y=zeros)
    # Side of the source, not the canvas: then translations come out in pixels (see warp).
    linear = affine_matrices(linear_params, side, side)[:, :2, :2]
    # The small per-image geometry stays on the CPU next to the draws; only warping moves.
    boxes = _support_boxes(images.cpu()).repeat(copies, 1)
    params["translate_x"], params["translate_y"], fits = _translations(linear, boxes, fractions, canvas)
    source_index = torch.arange(count).repeat(copies)

    device = torch.device(device)
    source = images.to(device)
    index_on_device = source_index.to(device)
    forward = affine_matrices(_float32_params(params), side, side).to(device)
    out = torch.empty(count * copies, canvas, canvas, dtype=torch.uint8)
    # Chunks bound the float32 working set (grid and output); results do not depend on them.
    for start in range(0, count * copies, _CHUNK):
        stop = min(start + _CHUNK, count * copies)
        batch = source[index_on_device[start:stop]].to(torch.float32).unsqueeze(1)
        warped = warp(batch, forward[start:stop], out_size=canvas)
        out[start:stop] = warped.squeeze(1).round().clamp(0, 255).to(torch.uint8).cpu()

    return AffineStyleSet(
        images=out,
        labels=labels.to(torch.int64).cpu()[source_index],
        params=_float32_params(params),
        source_index=source_index,
        ranges=ranges,
        seed=seed,
        copies=copies,
        canvas=canvas,
        source_sha256=source_fingerprint(images, labels),
        clipped=int((~fits).sum()),
    )


def _identity(ranges: AffineRanges, seed: int, copies: int, canvas: int, source_sha256: str,
              source_count: int) -> dict[str, object]:
    # What names a cache file; stored trials are keyed by its hash, so its keys never change.
    return {
        "ranges": ranges.as_dict(),
        "seed": seed,
        "copies": copies,
        "canvas": canvas,
        "source_images": source_count,
        "source_sha256": source_sha256,
        "generator_version": GENERATOR_VERSION,
    }


def cache_key(ranges: AffineRanges, seed: int, copies: int, canvas: int, source_sha256: str, source_count: int) -> str:
    return generated_cache.recipe_key(_identity(ranges, seed, copies, canvas, source_sha256, source_count))


def _encode(result: AffineStyleSet) -> dict[str, object]:
    return {
        "images": result.images,
        "labels": result.labels,
        "source_index": result.source_index,
        "params": {name: getattr(result.params, name) for name in _PARAM_NAMES},
    }


def _decode(payload: dict[str, object], metadata: dict[str, object]) -> AffineStyleSet:
    """The set in a cache file whose metadata matched; ValueError when its contents are off."""
    if not isinstance(metadata["clipped"], int):
        raise ValueError("clipped is not an integer")
    total = metadata["images"]
    canvas = metadata["canvas"]
    images, labels, index = payload["images"], payload["labels"], payload["source_index"]
    if images.dtype != torch.uint8 or tuple(images.shape) != (total, canvas, canvas):
        raise ValueError("cached images have the wrong shape or dtype")
    if labels.dtype != torch.int64 or index.dtype != torch.int64 or labels.shape != (total,) or index.shape != (total,):
        raise ValueError("cached labels or indices have the wrong shape or dtype")
    params = payload["params"]
    if set(params) != set(_PARAM_NAMES) or any(params[n].shape != (total,) for n in _PARAM_NAMES):
        raise ValueError("cached parameters are incomplete")
    ranges = AffineRanges(**metadata["ranges"])
    return AffineStyleSet(
        images=images, labels=labels, params=AffineParams(**params), source_index=index,
        ranges=ranges, seed=metadata["seed"], copies=metadata["copies"], canvas=canvas,
        source_sha256=metadata["source_sha256"], clipped=metadata["clipped"],
    )


def default_cache_dir() -> Path:
    return generated_cache.cache_directory(CACHE_FOLDER)


def load_or_generate(
    images: torch.Tensor,
    labels: torch.Tensor,
    ranges: AffineRanges = AffineRanges(),
    copies: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    canvas: int = CANVAS,
    cache_dir: Path | None = None,
) -> AffineStyleSet:
    """`generate`, cached as <cache_dir>/<key>.pt; the key covers ranges, seed, copies, canvas and source."""
    _check_inputs(images, labels, copies, canvas)
    count = images.shape[0]
    identity = _identity(ranges, seed, copies, canvas, source_fingerprint(images, labels), count)
    recipe = generated_cache.Recipe(
        name=DESCRIPTION,
        folder=CACHE_FOLDER,
        identity=identity,
        metadata={"description": DESCRIPTION, **identity, "images": count * copies},
        # How many digits had to be centred is known only once the set is generated.
        measured=("clipped",),
        # `generate` is looked up when called, so a test can count this module's generations.
        generate=lambda: generate(images, labels, ranges, copies, seed, device, canvas),
        encode=_encode,
        decode=_decode,
    )
    return generated_cache.load_or_generate(recipe, cache_dir)


def mnist_affnist_style(
    ranges: AffineRanges = AffineRanges(),
    copies: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: Path | None = None,
    cache_dir: Path | None = None,
) -> AffineStyleSet:
    """The affNIST-style (generated) set built from the MNIST test split, cached."""
    from studies.data import datasets

    images, labels = datasets.load("mnist", "test", root)
    cache_dir = generated_cache.cache_directory(CACHE_FOLDER, cache_dir, root)
    return load_or_generate(images, labels, ranges, copies, seed, device, CANVAS, cache_dir)


__all__ = [
    "DESCRIPTION",
    "AffineRanges",
    "AffineStyleSet",
    "cache_key",
    "default_cache_dir",
    "generate",
    "load_or_generate",
    "mnist_affnist_style",
    "source_fingerprint",
]
