"""Training to a matched clean accuracy (studies/engine/tasks.py MatchTarget), on a scripted model
whose one weight is the step it was written at and whose validation accuracy is a function of it."""
import io
from types import SimpleNamespace

import pytest
import torch

from studies.engine import tasks
from studies.spec.schema import Matching
from studies.training.config import TrainConfig
from studies.training.train import Progress, Split, StopTraining, build_model, train


class StepStamp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.step = torch.nn.Parameter(torch.zeros(()))


def run(monkeypatch, accuracy_at, every, target, margin=1.0, train_accuracy_at=lambda step: 1.0, steps=100,
        match="first"):
    """The training loop's calls, as `train` makes them: after_step every step, the check every `every`."""
    validated = []

    def evaluate(model, split, *args, **kwargs):
        validated.append(int(model.step.item()))
        return accuracy_at(validated[-1])

    monkeypatch.setattr(tasks, "evaluate", evaluate)
    settings = Matching(target_accuracy=target, check_every=every, screen_margin=margin, match=match)
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


def test_a_screen_that_opens_past_the_target_still_walks_back_its_interval(monkeypatch):
    matcher, weights, validated = run(monkeypatch, lambda step: step / 100, every=10, target=0.25, margin=0.0,
                                      train_accuracy_at=lambda step: 1.0 if step >= 30 else 0.0)
    # Weights are kept from the start, so the steps before the opening check are there to walk.
    assert validated == [30, 21, 22, 23, 24, 25] and matcher.matched["step"] == 25 and weights == 25


def test_at_most_check_every_weight_buffers_are_made(monkeypatch):
    matcher, _, _ = run(monkeypatch, lambda step: step / 100, every=10, target=0.95)
    assert len(matcher.slots) == 10


@pytest.mark.parametrize("every", [1, 7])
def test_every_interval_gives_the_same_match_on_a_rising_curve(monkeypatch, every):
    matcher, weights, _ = run(monkeypatch, lambda step: step / 100, every=every, target=0.5)
    assert matcher.matched["step"] == 50 and weights == 50


@pytest.mark.parametrize("target, matched", [(0.362, 36), (0.368, 37), (0.365, 37)])  # a tie goes to the step at it
def test_nearest_takes_the_step_before_the_crossing_when_it_reads_nearer(monkeypatch, target, matched):
    matcher, weights, validated = run(monkeypatch, lambda step: step / 100, every=10, target=target, match="nearest")
    assert matcher.matched["step"] == matched and weights == matched
    assert matcher.matched["val_accuracy"] == matched / 100 == matcher.last_val
    assert validated == [10, 20, 30, 40, 31, 32, 33, 34, 35, 36, 37]  # no evaluation beyond "first"'s


@pytest.mark.parametrize("every", [1, 10])
def test_nearest_reaches_back_to_the_previous_check(monkeypatch, every):
    # The crossing is at the first step after a check (31); the step before it is that check (30).
    matcher, weights, _ = run(monkeypatch, lambda step: 0.89 if step <= 30 else 0.98, every=every, target=0.9,
                              match="nearest")
    assert matcher.matched == {"step": 30, "images": 64 * 30, "val_accuracy": 0.89} and weights == 30


def test_nearest_without_a_reading_below_the_target_keeps_the_first(monkeypatch):
    matcher, weights, _ = run(monkeypatch, lambda step: 0.99, every=10, target=0.9, match="nearest")
    assert matcher.matched["step"] == 1 and weights == 1


def test_a_target_never_reached_leaves_no_match(monkeypatch):
    matcher, weights, _ = run(monkeypatch, lambda step: 0.1, every=10, target=0.9)
    assert matcher.matched is None and weights == 100


# --- through the real training loop -------------------------------------------------------------

TINY_CNN = {"conv_channels": (4, 4, 4), "fc_features": (8,)}


def synthetic_splits(size: int = 40) -> tuple[Split, Split, Split]:
    generator = torch.Generator().manual_seed(0)

    def split():
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (size,), generator=generator))

    return split(), split(), split()


def fingerprint(model: torch.nn.Module) -> float:
    return float(next(model.parameters()).detach().double().sum())


def test_train_hands_on_the_weights_of_the_matched_step(monkeypatch):
    """Real steps of a tiny CNN (10 per epoch); the validation accuracy is scripted by the step
    whose weights are evaluated: the walk restores step 7's weights, and the test split sees them."""
    steps_by_weights: dict[float, int] = {}

    class Recording(tasks.MatchTarget):
        def after_step(self, step, images, model):
            steps_by_weights[fingerprint(model)] = step
            super().after_step(step, images, model)

    monkeypatch.setattr(tasks, "evaluate", lambda model, split, *args, **kwargs:
                        1.0 if steps_by_weights[fingerprint(model)] >= 7 else 0.0)
    config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=2, batch_size=4, device="cpu", progress=False)
    matcher = Recording(Matching(target_accuracy=0.5, check_every=5, screen_margin=1.0), None, config)
    model = build_model(config)
    result = train(config, None, model, None, synthetic_splits(), check=matcher)
    assert matcher.matched == {"step": 7, "images": 28, "val_accuracy": 1.0}
    assert steps_by_weights[fingerprint(model)] == 7
    assert result.images_seen == 40  # training ran to the check at step 10
    assert matcher.evaluations == 2 + 2  # checks at 5 and 10, then steps 6 and 7


class CountingCheck:
    """A StepCheck whose state is the number of checks it has seen."""

    every = 3

    def __init__(self):
        self.calls = 0
        self.loaded = None

    def after_step(self, step, images, model):
        pass

    def __call__(self, progress):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.calls = state["calls"]


def test_a_resumed_run_gets_its_checks_state_back(tmp_path):
    config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=2, batch_size=4, device="cpu", progress=False)
    straight = CountingCheck()
    train(config, check=straight, splits=synthetic_splits())

    def crash_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, crash_in_epoch_2, checkpoint=checkpoint, check=CountingCheck(), splits=synthetic_splits())
    resumed = CountingCheck()
    train(config, checkpoint=checkpoint, check=resumed, splits=synthetic_splits())
    # Epoch 1 (10 steps): checks at 3, 6, 9 and its last step; the resumed run counts on from there.
    assert resumed.loaded == {"calls": 4} and resumed.calls == straight.calls == 8


def test_the_matchers_screen_and_last_reading_below_survive_a_resume(monkeypatch):
    monkeypatch.setattr(tasks, "evaluate", lambda *args, **kwargs: 0.0)
    settings = Matching(target_accuracy=0.9, check_every=2, screen_margin=0.1, match="nearest")
    config = SimpleNamespace(eval_batch_size=1, bf16=False)
    first = tasks.MatchTarget(settings, None, config)
    first(Progress(1, 2, 128, 0.85, StepStamp()))  # the screen opens
    resumed, fresh = tasks.MatchTarget(settings, None, config), tasks.MatchTarget(settings, None, config)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as the checkpoint stores it
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    for matcher in (resumed, fresh):  # a dip of the training accuracy below the screen
        matcher(Progress(2, 4, 256, 0.5, StepStamp()))
    assert resumed.evaluations == 2 and fresh.evaluations == 0
    assert resumed.below["step"] == 4 and set(resumed.below_weights) == {"step"}
