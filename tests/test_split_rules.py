"""How an example counts as right travels with its split, the training layer names no data set, and
the robustness set a study's trials share is held once."""
import ast
import gc
import weakref
from pathlib import Path

import pytest
import torch

from models.multimnist import digit_correct, pair_correct, predict_pair
from models.output import ModelOutput
from studies.data.robustness_sets import LastRobustnessSet, RobustnessSet, distinct_edit
from studies.data.splits import Split, top_class_correct
from studies.engine.tasks import both_digits_found, each_digit_found
from studies.training.loop import evaluate

ROOT = Path(__file__).resolve().parent.parent
DATA_SET_MODULES = {"models.multimnist", "studies.data.multimnist", "studies.data.affnist", "studies.data.affnist_style"}


class FixedScores(torch.nn.Module):
    """Returns the scores it was built with, a batch at a time, in order."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores, self.start = scores, 0

    def forward(self, images: torch.Tensor, labels=None) -> ModelOutput:
        batch = self.scores[self.start : self.start + images.shape[0]]
        self.start += images.shape[0]
        return ModelOutput(scores=batch)


def pair_split(count: int, correct) -> tuple[Split, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randperm(10, generator=generator)[:2] for _ in range(count)])
    scores = torch.rand(count, 10, generator=generator)
    images = torch.zeros(count, 1, 4, 4, dtype=torch.uint8)
    return Split(images, labels, correct=correct), scores


def test_the_training_layer_imports_no_data_set_module():
    for path in (ROOT / "studies" / "training").glob("*.py"):
        named = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                named |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        assert not named & DATA_SET_MODULES, f"{path.name} imports {sorted(named & DATA_SET_MODULES)}"


def test_a_split_counts_one_label_by_the_top_class_unless_told_otherwise():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    split = Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 1, 1]))
    assert split.correct is top_class_correct
    assert evaluate(FixedScores(scores), split, batch_size=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="its own `correct` rule"):
        top_class_correct(scores, torch.tensor([[0, 1], [1, 0], [0, 1]]))


def test_a_pair_split_is_counted_by_its_pair_rule_and_the_digits_by_theirs():
    split, scores = pair_split(23, both_digits_found)
    pairs = pair_correct(predict_pair(scores), split.labels)
    digits = digit_correct(predict_pair(scores), split.labels)
    assert evaluate(FixedScores(scores), split, batch_size=5) == pairs.sum().item() / 23
    by_digit = Split(split.images, split.labels, correct=each_digit_found)
    # One rule per label: the fraction of the 2 x 23 digits found.
    assert evaluate(FixedScores(scores), by_digit, batch_size=5) == digits.sum().item() / (2 * 23)


def test_the_robustness_set_holder_keeps_one_set_and_frees_the_one_it_replaces():
    made = []

    def make(tag):
        def build():
            made.append(tag)
            return RobustnessSet(Split(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)), tag, {}, "")
        return build

    holder = LastRobustnessSet()
    first = holder.get(("a", "cpu"), make("a"))
    assert holder.get(("a", "cpu"), make("a")) is first and made == ["a"]
    gone = weakref.ref(first)
    del first
    second = holder.get(("b", "cpu"), make("b"))
    gc.collect()
    assert gone() is None and second.name == "b" and made == ["a", "b"]
    holder.clear()
    assert holder.get(("b", "cpu"), make("b")) is not second and made == ["a", "b", "b"]


def test_sweep_amounts_that_make_the_same_image_are_one_edit():
    assert distinct_edit("rotation", 360) is None and distinct_edit("translation", 0) is None
    assert distinct_edit("rotation", -180) == distinct_edit("rotation", 180) == ("rotation", 180.0)
    assert distinct_edit("rotation", 270) == ("rotation", -90.0)
