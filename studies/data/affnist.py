"""Reading the official affNIST Matlab files (Tieleman), when the user has put them on disk.

The files cannot be downloaded on these machines; the user drops them into `<data root>/affNIST/`
(any case of the folder name: `affnist/` too) or the data root itself, as the affNIST page
distributes them or extracted. Per split (here `test`), in this order of preference:
`test.mat` (one file), `test_batches/1.mat ... N.mat` (batches), or the archives as downloaded,
read without extracting them: `test.mat.zip` (holding test.mat) and `test_batches.zip` (holding
test_batches/<n>.mat). An affNIST folder that holds none of these is an error that says what it
found and what it expects. Each file holds a struct `affNISTdata` whose field `image` is uint8
1600 x N (one column per image) and `label_int` holds the N labels.

Pixel orientation: each column is reshaped row-major to 40x40 (pixel k -> row k // 40,
col k % 40), as public loaders do. Nothing official confirms it, so `check_orientation`
checks it: a just-centered image (the digit with a 6-pixel border) cropped to [6:34, 6:34]
must equal its MNIST original.
"""
from __future__ import annotations

import contextlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

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
FOLDER = "affNIST"
PAGE = "https://www.cs.toronto.edu/~tijmen/affNIST/"
# What archive tools add beside the real members (macOS resource forks).
_ARCHIVE_JUNK = ("__MACOSX/",)


class AffnistError(ValueError):
    """An official affNIST file is missing, unreadable or not shaped as documented."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AffnistError(f"unknown affNIST split {split!r}; valid: {', '.join(SPLITS)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class MatFile:
    """One .mat file of a split: on disk, or a member of a zip archive as downloaded."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Path | IO[bytes]]:
        """What scipy.io.loadmat reads: the path, or the archive member as a stream (no extraction)."""
        if self.member is None:
            yield self.path
            return
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as stream:
            yield stream


@dataclass(frozen=True)
class SplitFiles:
    """Where one split's official files are, and what they are, named for the user and the report."""

    directory: Path
    files: tuple[MatFile, ...]
    found: str  # e.g. "test.mat.zip", "test_batches/ (32 files)"


def _listing(names: list[str], limit: int = 4) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _numbered(where: object, names: list[str]) -> list[str]:
    """The batch files among `names` (.mat files, any folder) in numeric order: 10.mat after 9.mat,
    not after 1.mat."""
    mats = [n for n in names if n.lower().endswith(".mat") and not n.startswith(_ARCHIVE_JUNK)
            and not PurePosixPath(n).name.startswith("._")]
    odd = [n for n in mats if not re.fullmatch(r"\d+", PurePosixPath(n).stem)]
    if odd:
        raise AffnistError(f"{where}: batch files must be named <number>.mat, found {sorted(odd)[0]!r}")
    return sorted(mats, key=lambda n: int(PurePosixPath(n).stem))


def _zip_names(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as opened:
            return [info.filename for info in opened.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise AffnistError(f"{archive}: not a readable zip archive ({_one_line(exc)}); "
                           f"download it again from {PAGE}") from exc


def _split_in(directory: Path, split: str) -> SplitFiles | None:
    """The split's files in `directory` (names in any case), the extracted ones first."""
    entries = {p.name.lower(): p for p in directory.iterdir()}
    single = entries.get(f"{split}.mat")
    if single is not None and single.is_file():
        return SplitFiles(directory, (MatFile(single),), single.name)
    batches = entries.get(f"{split}_batches")
    if batches is not None and batches.is_dir():
        names = _numbered(batches, [p.name for p in batches.iterdir() if p.is_file()])
        if names:
            files = tuple(MatFile(batches / n) for n in names)
            return SplitFiles(directory, files, f"{batches.name}/ ({len(names)} files)")
    archive = entries.get(f"{split}.mat.zip")
    if archive is not None and archive.is_file():
        names = _zip_names(archive)
        members = [n for n in names
                   if PurePosixPath(n).name.lower() == f"{split}.mat" and not n.startswith(_ARCHIVE_JUNK)]
        if not members:
            raise AffnistError(f"{archive} holds {_listing(names)} but no {split}.mat; download it again from {PAGE}")
        return SplitFiles(directory, (MatFile(archive, members[0]),), archive.name)
    archive = entries.get(f"{split}_batches.zip")
    if archive is not None and archive.is_file():
        names = _numbered(archive, _zip_names(archive))
        if not names:
            raise AffnistError(f"{archive} holds no <number>.mat batch files; download it again from {PAGE}")
        return SplitFiles(directory, tuple(MatFile(archive, n) for n in names), f"{archive.name} ({len(names)} files)")
    return None


def _affnist_folders(root: Path) -> list[Path]:
    """Folders under `root` named affNIST in any case."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() == FOLDER.lower())


def find_split(root: Path, split: str = "test") -> SplitFiles | None:
    """The official files of `split` in root/affNIST (any case) or root, else None. An affNIST
    folder without them is an AffnistError saying what it holds and what is expected: the user
    put it there to have it used, and a silent fall-back would hide the mistake."""
    _check_split(split)
    root = Path(root)
    folders = _affnist_folders(root)
    for directory in [*folders, root]:
        found = _split_in(directory, split) if directory.is_dir() else None
        if found is not None:
            return found
    if folders:
        held = [p.name + ("/" if p.is_dir() else "") for p in folders[0].iterdir()]
        raise AffnistError(
            f"{folders[0]} holds {_listing(held)} but no affNIST {split} set: expected {split}.mat.zip or "
            f"{split}_batches.zip as downloaded from {PAGE}, or the files they hold ({split}.mat, "
            f"{split}_batches/<n>.mat)"
        )
    return None


def find_affnist(root: Path, split: str = "test") -> Path | None:
    """The directory holding official files for `split` (root/affNIST in any case, or root), else None."""
    found = find_split(root, split)
    return found.directory if found is not None else None


def _load_struct(mat: MatFile) -> np.ndarray:
    try:
        with mat.opened() as source:
            # squeeze_me=False keeps a 1-image file 2-D; records give the same indexing whatever
            # the field order.
            contents = scipy.io.loadmat(source, squeeze_me=False, struct_as_record=True, variable_names=[STRUCT])
    except NotImplementedError as exc:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise AffnistError(f"{mat}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7 ({_one_line(exc)})") from exc
    except Exception as exc:  # scipy (and a damaged archive member) raise several types
        raise AffnistError(f"{mat}: not a readable .mat file ({_one_line(exc)})") from exc
    struct = contents.get(STRUCT)
    if struct is None:
        raise AffnistError(f"{mat}: no variable {STRUCT!r} in the file")
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None or struct.size != 1:
        raise AffnistError(f"{mat}: {STRUCT} is not a 1x1 struct")
    return struct.reshape(-1)[0]


def _field(record: np.void, name: str, path: object) -> np.ndarray:
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


def _images(record: np.void, path: object) -> np.ndarray:
    image = _field(record, IMAGE_FIELD, path)
    what = f"{path}: {STRUCT}.{IMAGE_FIELD}"
    if image.ndim != 2 or image.shape[0] != PIXELS:
        raise AffnistError(f"{what} has shape {image.shape}, expected ({PIXELS}, N): one column per image")
    if image.shape[1] == 0:
        raise AffnistError(f"{what} holds no images")
    if image.dtype != np.uint8:
        image = _as_integers(image, 0, 255, what).astype(np.uint8)
    return image


def _labels(record: np.void, count: int, path: object) -> np.ndarray:
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


def read_mat(mat: MatFile) -> tuple[torch.Tensor, torch.Tensor]:
    """One .mat file (or archive member) -> uint8 (N, 40, 40) images and int64 (N,) labels, validated."""
    record = _load_struct(mat)
    image = _images(record, mat)
    labels = _labels(record, image.shape[1], mat)
    return torch.from_numpy(columns_to_images(image)), torch.from_numpy(labels)


def read_affnist_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One .mat file on disk -> uint8 (N, 40, 40) images and int64 (N,) labels, validated."""
    return read_mat(MatFile(Path(path)))


def load_split(found: SplitFiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Every file of a split found by `find_split`, in order: uint8 (N,40,40), int64 (N,)."""
    parts = [read_mat(mat) for mat in found.files]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels


def load_affnist(root: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The official affNIST `split` under root/affNIST (any case) or root: uint8 (N,40,40), int64 (N,)."""
    found = find_split(root, split)
    if found is None:
        raise AffnistError(
            f"no official affNIST {split} files under {Path(root) / FOLDER} or {root} "
            f"(expected {split}.mat.zip or {split}_batches.zip from {PAGE}, or {split}.mat or {split}_batches/<n>.mat)"
        )
    return load_split(found)


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
    "MatFile",
    "SPLITS",
    "SplitFiles",
    "check_orientation",
    "columns_to_images",
    "find_affnist",
    "find_split",
    "load_affnist",
    "load_split",
    "read_affnist_file",
    "read_mat",
]
