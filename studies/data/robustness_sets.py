"""The data a robustness measure reads: the affNIST test set (the official files when present,
else the generated affNIST-style set) with its identity (`RobustnessSet`, `affnist_set`), the
holder that keeps the one set a study's trials share on the device (`LastRobustnessSet`), and the
image edits of the rotation and translation sweeps (`distinct_edit`, `edit_function`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from tqdm.auto import tqdm

from studies.data import affnist, affnist_style, augment
from studies.data.datasets import default_data_root
from studies.data.splits import Split
from studies.data.subsets import stratified_subset


@dataclass(frozen=True)
class RobustnessSet:
    split: Split
    name: str
    # What the set is made of (its recipe, or the official files' digest) and which subset: its
    # identity, the same on every machine.
    recipe: dict[str, Any]
    # The digest of the images as made here: for information only (a generated set's pixels may
    # round differently on another CPU or a GPU).
    output_sha256: str
    # Which official files were read, relative to the data root (information for the report, not
    # identity: the archive as downloaded and its extracted files are the same set); "" if generated.
    files: str = ""

    @property
    def identity(self) -> dict[str, Any]:
        """What must match for two trials to have been tested on the same set."""
        return {"robustness_set": self.name, **self.recipe}


def affnist_set(data_root: str | None, ranges: affnist_style.AffineRanges, copies: int, generator_seed: int,
                size: int | None, subset_seed: int, device: torch.device) -> RobustnessSet:
    """Official affNIST test files when present under the data root (`data_root`, else the default
    one), else the generated set (`ranges`, `copies` transformed copies per MNIST test digit,
    `generator_seed`), or a class-stratified random subset of `size` images of either (seeded by
    `subset_seed`), on `device`."""
    root = Path(data_root) if data_root else default_data_root()
    official = affnist.find_split(root, "test")
    files = ""
    if official is not None:
        images, labels = affnist.load_split(official)
        name = "affNIST"
        recipe = {"source": "official affNIST test files",
                  "source_sha256": affnist_style.source_fingerprint(images, labels)}
        folder = official.directory.relative_to(root)
        files = official.found if folder == Path(".") else f"{folder}/{official.found}"
        tqdm.write(f"affnist: testing on the official affNIST test set, {files} in {root} "
                   f"({labels.shape[0]} images)")
    else:
        # Said before anything trains, not only in REPORT.md: a user who meant to supply the files
        # learns now that they were not found.
        tqdm.write(f"affnist: no official affNIST test files in {root / affnist.FOLDER} (test.mat.zip or "
                   f"test_batches.zip from {affnist.PAGE}, or the .mat files they hold); testing on the "
                   "generated affNIST-style set instead")
        generated = affnist_style.mnist_affnist_style(
            ranges, copies=copies, seed=generator_seed, device=device, root=data_root and Path(data_root),
        )
        images, labels = generated.images, generated.labels
        name = affnist_style.DESCRIPTION
        recipe = {"ranges": ranges.as_dict(), "copies": generated.copies, "generator_seed": generated.seed,
                  "generator_version": affnist_style.GENERATOR_VERSION, "canvas": generated.canvas,
                  "source_sha256": generated.source_sha256}
    if size and size < labels.shape[0]:
        index = stratified_subset(labels, size, subset_seed)
        images, labels = images[index], labels[index]
        recipe["subset"] = {"images": size, "stratified_seed": subset_seed}
    recipe["images"] = int(labels.shape[0])
    output = affnist_style.source_fingerprint(images.cpu(), labels.cpu())
    return RobustnessSet(Split(images.unsqueeze(1).to(device), labels.to(device)), name, recipe, output, files)


class LastRobustnessSet:
    """The robustness set last made, kept on its device with the key it was made from.

    A study's trials (and its preflight, for the trials' identity) all read the same set: making it
    again for every trial would read or generate, subset and copy it to the device each time. One
    set is kept, not one per key: asking for another replaces it, so a process that moves on to
    another set frees the previous one; `clear` frees it at once."""

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._set: RobustnessSet | None = None

    def get(self, key: Hashable, make: Callable[[], RobustnessSet]) -> RobustnessSet:
        """The set made for `key`, made by `make` unless it is the one kept."""
        if self._set is None or self._key != key:
            self.clear()  # the old set's device memory goes before the new one is made
            self._set, self._key = make(), key
        return self._set

    def clear(self) -> None:
        self._key = self._set = None


# --- the sweeps' edits ----------------------------------------------------------------------

Edit = tuple[str, float]


def distinct_edit(transform: str, amount: float) -> Edit | None:
    """The edit a sweep amount makes, once per distinct edit: None for no change (rotation by a
    multiple of 360 degrees, no shift); rotations in (-180, 180], so -180 and 180 are one edit."""
    if transform == "rotation":
        turned = float(amount) % 360.0
        turned = turned - 360.0 if turned > 180.0 else turned
        return None if turned == 0.0 else ("rotation", turned)
    return None if int(amount) == 0 else ("translation", int(amount))


def edit_function(edit: Edit) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit as a function of float batches (N, C, H, W): a rotation by its angle in degrees, or
    a horizontal shift by its pixels with zero fill."""
    transform, amount = edit
    if transform == "rotation":
        def rotated(images):
            return augment.rotate(images, torch.full((images.shape[0],), amount, device=images.device))
        return rotated

    def shifted(images):
        offsets = torch.full((images.shape[0],), int(amount), device=images.device)
        return augment.shift(images, torch.zeros_like(offsets), offsets, abs(int(amount)))
    return shifted
