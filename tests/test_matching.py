"""Training to a matched clean accuracy (studies/engine/tasks.py MatchTarget), on a scripted model
whose one weight is the step it was written at and whose validation accuracy is a function of it."""
from types import SimpleNamespace

import pytest
import torch

from studies.engine import tasks
from studies.spec.schema import Matching
from studies.training.train import Progress, StopTraining


class StepStamp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.step = torch.nn.Parameter(torch.zeros(()))


def run(monkeypatch, accuracy_at, every, target, margin=1.0, train_accuracy_at=lambda step: 1.0, steps=100):
    """The training loop's calls, as `train` makes them: after_step every step, the check every `every`."""
    validated = []

    def evaluate(model, split, *args, **kwargs):
        validated.append(int(model.step.item()))
        return accuracy_at(validated[-1])

    monkeypatch.setattr(tasks, "evaluate", evaluate)
    settings = Matching(target_accuracy=target, check_every=every, screen_margin=margin)
    matcher = tasks.MatchTarget(settings, val=None, config=SimpleNamespace(eval_batch_size=1, bf16=False))
    model = StepStamp()
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.step.fill_(step)
        matcher.after_step(step, 64 * step, model)
        if step % every == 0:
            try:
                matcher(Progress(1, step, 64 * step, train_accuracy_at(step), model))
            except StopTraining:
                break
    return matcher, int(model.step.item()), validated


def test_the_match_is_the_earliest_step_at_the_target_not_the_check_after_it(monkeypatch):
    matcher, weights, validated = run(monkeypatch, lambda step: step / 100, every=10, target=0.37)
    assert matcher.matched == {"step": 37, "images": 64 * 37, "val_accuracy": 0.37}
    assert weights == 37  # the model handed on (to the test set) is the matched one
    # Checks at 10..40, then the kept steps 31..37 oldest first; never a step after the match.
    assert validated == [10, 20, 30, 40, 31, 32, 33, 34, 35, 36, 37]
    assert matcher.evaluations == len(validated) and matcher.last_val == 0.37


def test_a_noisy_crossing_inside_the_interval_is_found_at_its_first_step(monkeypatch):
    def accuracy(step):
        return 0.95 if step in (33, 40) else 0.5

    matcher, weights, _ = run(monkeypatch, accuracy, every=10, target=0.9)
    assert matcher.matched["step"] == 33 and weights == 33


def test_when_only_the_check_reaches_the_target_its_weights_are_put_back(monkeypatch):
    matcher, weights, validated = run(monkeypatch, lambda step: 1.0 if step >= 40 else 0.0, every=10, target=0.9)
    assert matcher.matched["step"] == 40 and weights == 40 and matcher.last_val == 1.0
    assert validated[-1] == 39


def test_the_screen_holds_validation_until_the_training_accuracy_is_near_the_target(monkeypatch):
    matcher, weights, validated = run(monkeypatch, lambda step: step / 100, every=10, target=0.55, margin=0.1,
                                      train_accuracy_at=lambda step: 0.5 if step >= 40 else 0.2)
    # Nothing is validated (or kept) before the screen opens at 40; from then on as above.
    assert validated[:3] == [40, 50, 60] and matcher.matched["step"] == 55 and weights == 55


def test_a_screen_that_opens_past_the_target_matches_at_that_check(monkeypatch):
    matcher, weights, validated = run(monkeypatch, lambda step: step / 100, every=10, target=0.25, margin=0.0,
                                      train_accuracy_at=lambda step: 1.0 if step >= 30 else 0.0)
    assert validated == [30] and matcher.matched["step"] == 30 and weights == 30


@pytest.mark.parametrize("every", [1, 7])
def test_every_interval_gives_the_same_match_on_a_rising_curve(monkeypatch, every):
    matcher, weights, _ = run(monkeypatch, lambda step: step / 100, every=every, target=0.5)
    assert matcher.matched["step"] == 50 and weights == 50


def test_a_target_never_reached_leaves_no_match(monkeypatch):
    matcher, weights, _ = run(monkeypatch, lambda step: 0.1, every=10, target=0.9)
    assert matcher.matched is None and weights == 100
