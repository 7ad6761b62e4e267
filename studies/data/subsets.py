"""Seeded class-stratified random subsets: how every split takes part of a dataset.

A fixed block of a dataset is a biased sample: MNIST's test set is not homogeneous (its two halves
come from different sources and differ markedly in difficulty), and blocks of the training set
differ too. So a subset of `size` images is drawn at random, class by class: each class gets its
share of `size` in proportion to its count (largest remainders settle the rounding, lower class
first on a tie), and its images are a seeded random choice among that class's. The same labels,
size and seed give the same indices wherever the same torch release runs (a CPU generator, integer
arithmetic only).
"""
from __future__ import annotations

import torch


def class_quotas(labels: torch.Tensor, size: int) -> dict[int, int]:
    """How many images of each class a stratified subset of `size` takes (summing to `size`)."""
    total = int(labels.numel())
    if not 0 <= size <= total:
        raise ValueError(f"a subset of {size} images from {total}")
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    shares = [(int(c), int(n)) for c, n in zip(classes.tolist(), counts.tolist())]
    quotas = {c: size * n // total for c, n in shares}
    # Largest remainder first (size * n mod total, exact in integers), then the lower class.
    order = sorted(shares, key=lambda cn: (-(size * cn[1] % total), cn[0]))
    for c, _ in order[: size - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted int64 indices of a class-stratified random subset of `size` of `labels`."""
    labels = labels.cpu()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    chosen = []
    for label, quota in sorted(class_quotas(labels, size).items()):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:quota]])
    return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.int64)


def train_val_test_indices(train_labels: torch.Tensor, test_labels: torch.Tensor, train_size: int | None,
                           val_size: int, test_size: int | None, seed: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint training and validation indices into the training images, and test indices into the
    test images, each a stratified random subset (None: everything left). The validation split is
    drawn first, from all training images, so it does not change with `train_size`; the training
    split is drawn from the rest with generator seed `seed + 1`, the test subset with `seed + 2`.
    (Split seeds s and s + 1 therefore share a stream between one's training draw and the other's
    validation draw: replicate splits should use seeds at least 3 apart.)"""
    everything = torch.arange(train_labels.numel())
    val = stratified_subset(train_labels, val_size, seed)
    rest = everything[~torch.isin(everything, val)]
    if train_size is None:
        train = rest
    else:
        train = rest[stratified_subset(train_labels[rest], train_size, seed + 1)]
    test = (torch.arange(test_labels.numel()) if test_size is None
            else stratified_subset(test_labels, test_size, seed + 2))
    return train, val, test


__all__ = ["class_quotas", "stratified_subset", "train_val_test_indices"]
