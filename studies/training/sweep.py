"""A model's accuracy on a split swept over image edits, rotations by angles and horizontal
shifts (`sweep`): the rotation study's robustness measure at a checkpoint. The edits themselves are
data transforms (studies/data/robustness_sets.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from studies.data.robustness_sets import distinct_edit, edit_function
from studies.training.loop import Split, evaluate


def sweep(model: torch.nn.Module, split: Split, angles: Sequence[float], shifts: Sequence[int], batch_size: int,
          bf16: bool) -> tuple[list[dict[str, Any]], float]:
    """Accuracy on `split` at every rotation angle (degrees) and horizontal shift (pixels, zero
    fill), one row each in that order, and on the unchanged split (its clean accuracy); each
    distinct edit is evaluated once."""
    requested = [("rotation", a) for a in angles] + [("translation", s) for s in shifts]
    accuracies = {None: evaluate(model, split, batch_size, bf16=bf16)}
    for transform, amount in requested:
        edit = distinct_edit(transform, amount)
        if edit not in accuracies:
            accuracies[edit] = evaluate(model, split, batch_size, edit_function(edit), bf16=bf16)
    rows = [{"transform": transform, "amount": amount, "accuracy": accuracies[distinct_edit(transform, amount)]}
            for transform, amount in requested]
    return rows, accuracies[None]
