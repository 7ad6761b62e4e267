"""Reading the official affNIST Matlab files (Tieleman), when the user has put them on disk.

The files cannot be downloaded on these machines; the user drops them into
`<data root>/affNIST/` (or the data root itself). Two layouts are read: one file per split
(`test.mat`, `training_and_validation.mat`) or batches (`test_batches/1.mat ... N.mat`,
`training_and_validation_batches/*.mat`). Each file holds a struct `affNISTdata` whose
field `image` is uint8 1600 x N (one column per image) and `label_int` holds the N labels.

Pixel orientation: each column is reshaped row-major to 40x40 (pixel k -> row k // 40,
col k % 40), as public loaders do. Nothing official confirms it, so `check_orientation`
checks it: a just-centered image (the digit with a 6-pixel border) cropped to [6:34, 6:34]
must equal its MNIST original.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io
import torch

SIDE = 40
PIXELS = SIDE * SIDE
STRUCT = "affNISTdata"
IMAGE_FIELD = "image"
LABEL_FIELD = "label_int"
NUM_CLASSES = 10
# The just-centered files put the 28x28 digit inside a 6-pixel border.
CENTER_BORDER = 6
# `training` and `validation` follow the same naming as `test`, so the
# loader accepts them too (e.g. for the just_centered/ folder).
SPLITS = ("test", "training_and_validation", "training", "validation")


class AffnistError(ValueError):
    """An official affNIST file is missing, unreadable or not shaped as documented."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AffnistError(f"unknown affNIST split {split!r}; valid: {', '.join(SPLITS)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _batch_files(directory: Path) -> list[Path]:
    """The batch files of one split in numeric order (10.mat after 9.mat, not after 1.mat)."""
    files = [p for p in directory.iterdir() if p.suffix.lower() == ".mat" and p.is_file()]
    odd = [p.name for p in files if not re.fullmatch(r"\d+", p.stem)]
    if odd:
        raise AffnistError(f"{directory}: batch files must be named <number>.mat, found {sorted(odd)[0]!r}")
    return sorted(files, key=lambda p: int(p.stem))


def _has_split(directory: Path, split: str) -> bool:
    if (directory / f"{split}.mat").is_file():
        return True
    batches = directory / f"{split}_batches"
    return batches.is_dir() and any(p.suffix.lower() == ".mat" for p in batches.iterdir())


def find_affnist(root: Path, split: str = "test") -> Path | None:
    """The directory holding official files for `split` (root/affNIST or root), else None."""
    _check_split(split)
    root = Path(root)
    for directory in (root / "affNIST", root):
        if directory.is_dir() and _has_split(directory, split):
            return directory
    return None


def _split_files(directory: Path, split: str) -> list[Path]:
    # The single file wins when both layouts are present: it is the same data in one read.
    single = directory / f"{split}.mat"
    if single.is_file():
        return [single]
    return _batch_files(directory / f"{split}_batches")


def _load_struct(path: Path) -> np.ndarray:
    try:
        # squeeze_me=False keeps a 1-image file 2-D; records give the same indexing whatever
        # the field order.
        contents = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True, variable_names=[STRUCT])
    except NotImplementedError as exc:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise AffnistError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7 ({_one_line(exc)})") from exc
    except Exception as exc:  # scipy raises several types for files that are not .mat at all
        raise AffnistError(f"{path}: not a readable .mat file ({_one_line(exc)})") from exc
    struct = contents.get(STRUCT)
    if struct is None:
        raise AffnistError(f"{path}: no variable {STRUCT!r} in the file")
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size != 1:
        raise AffnistError(f"{path}: {STRUCT} is not a 1x1 struct")
    return struct.reshape(-1)[0]


def _field(record: np.void, name: str, path: Path) -> np.ndarray:
    names = record.dtype.names or ()
    if name not in names:
        raise AffnistError(f"{path}: {STRUCT} has no field {name!r} (fields: {', '.join(names) or 'none'})")
    return np.asarray(record[name])


def _as_integers(values: np.ndarray, low: int, high: int, what: str) -> np.ndarray:
    """`values` as int64 when every entry is an integer in [low, high]; else AffnistError."""
    if values.dtype.kind not in "uif":
        raise AffnistError(f"{what} has dtype {values.dtype}, expected integers in {low}..{high}")
    if values.size and values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise AffnistError(f"{what} has non-integer values, expected integers in {low}..{high}")
    if values.size and (values.min() < low or values.max() > high):
        raise AffnistError(f"{what} has values in {values.min():g}..{values.max():g}, expected {low}..{high}")
    return values.astype(np.int64)


def _images(record: np.void, path: Path) -> np.ndarray:
    image = _field(record, IMAGE_FIELD, path)
    what = f"{path}: {STRUCT}.{IMAGE_FIELD}"
    if image.ndim != 2 or image.shape[0] != PIXELS:
        raise AffnistError(f"{what} has shape {image.shape}, expected ({PIXELS}, N): one column per image")
    if image.shape[1] == 0:
        raise AffnistError(f"{what} holds no images")
    if image.dtype != np.uint8:
        image = _as_integers(image, 0, 255, what).astype(np.uint8)
    return image


def _labels(record: np.void, count: int, path: Path) -> np.ndarray:
    labels = _field(record, LABEL_FIELD, path)
    what = f"{path}: {STRUCT}.{LABEL_FIELD}"
    shape = labels.shape
    # MATLAB has no 1-D arrays: N labels come back as (1, N) or (N, 1) depending on the writer.
    if labels.ndim == 2 and 1 in shape:
        labels = labels.reshape(-1)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise AffnistError(f"{what} has shape {shape}, expected {count} labels to match {IMAGE_FIELD}")
    return _as_integers(labels, 0, NUM_CLASSES - 1, what)


def columns_to_images(columns: np.ndarray) -> np.ndarray:
    """(1600, N) columns -> (N, 40, 40), each column read row-major (k -> row k//40, col k%40)."""
    return np.ascontiguousarray(columns.T).reshape(-1, SIDE, SIDE)


def read_affnist_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One .mat file -> uint8 (N, 40, 40) images and int64 (N,) labels, validated."""
    path = Path(path)
    record = _load_struct(path)
    image = _images(record, path)
    labels = _labels(record, image.shape[1], path)
    return torch.from_numpy(columns_to_images(image)), torch.from_numpy(labels)


def load_affnist(root: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The official affNIST `split` under root/affNIST or root: uint8 (N,40,40), int64 (N,)."""
    directory = find_affnist(root, split)
    if directory is None:
        raise AffnistError(
            f"no official affNIST {split} files under {Path(root) / 'affNIST'} or {root} "
            f"(expected {split}.mat or {split}_batches/<n>.mat)"
        )
    parts = [read_affnist_file(path) for path in _split_files(directory, split)]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels


def check_orientation(just_centered_images: torch.Tensor | np.ndarray, mnist_originals: torch.Tensor | np.ndarray) -> bool:
    """True when every just-centered image cropped to [6:34, 6:34] equals its MNIST original."""
    centered = torch.as_tensor(just_centered_images)
    originals = torch.as_tensor(mnist_originals)
    if centered.ndim != 3 or tuple(centered.shape[1:]) != (SIDE, SIDE):
        raise ValueError(f"just-centered images have shape {tuple(centered.shape)}, expected (N, {SIDE}, {SIDE})")
    inner = SIDE - 2 * CENTER_BORDER
    if tuple(originals.shape) != (centered.shape[0], inner, inner):
        raise ValueError(f"originals have shape {tuple(originals.shape)}, expected ({centered.shape[0]}, {inner}, {inner})")
    crop = centered[:, CENTER_BORDER : SIDE - CENTER_BORDER, CENTER_BORDER : SIDE - CENTER_BORDER]
    return torch.equal(crop.to(torch.int64), originals.to(torch.int64))


__all__ = [
    "AffnistError",
    "SPLITS",
    "check_orientation",
    "columns_to_images",
    "find_affnist",
    "load_affnist",
    "read_affnist_file",
]
