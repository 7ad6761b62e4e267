"""Robustness curves along training (studies/training/curves.py): the checkpoint schedule, the
bracketing of levels, the interpolation, and the recorder through the real training loop, on
scripted validation readings."""
import io
import math

import pytest
import torch

from studies.training import curves
from studies.training.config import TrainConfig
from studies.training.curves import CurveRecorder, Schedule, first_crossing, interpolate
from studies.training.loop import Progress, Split, build_model, train

TINY_CNN = {"conv_channels": (4, 4, 4), "fc_features": (8,)}


def test_the_schedule_is_dense_only_near_a_level():
    schedule = Schedule(levels=(0.9, 0.95), check_every=100, dense_every=10, dense_margin=0.02)
    assert [schedule.next_interval(v) for v in (0.5, 0.879, 0.881, 0.9, 0.93, 0.94, 0.969, 0.971, 0.99)] == \
        [100, 100, 10, 10, 10, 10, 10, 100, 100]


def test_a_level_is_bracketed_by_its_first_crossing():
    readings = [0.5, 0.85, 0.91, 0.89, 0.93]
    assert first_crossing(readings, 0.9) == 2  # (0.85, 0.91), not the later (0.89, 0.93)
    assert first_crossing(readings, 0.85) == 1  # reaching the level exactly counts
    assert first_crossing(readings, 0.95) is None  # never reached
    assert first_crossing(readings, 0.4) is None  # above it from the first checkpoint: nothing brackets it
    # At or above from the first reading, a dip and a second rise do not make a crossing.
    assert first_crossing([0.81, 0.79, 0.82], 0.8) is None
    assert first_crossing([], 0.5) is None and first_crossing([0.6], 0.5) is None


def test_interpolation_by_hand():
    # Between (0.85, robustness 0.60) and (0.91, 0.66): at 0.9, 5/6 of the way: 0.65.
    readings, robustness = [0.5, 0.85, 0.91], [0.3, 0.60, 0.66]
    assert interpolate(readings, robustness, 0.9) == pytest.approx(0.65)
    assert interpolate(readings, robustness, 0.91) == pytest.approx(0.66)
    assert math.isnan(interpolate(readings, robustness, 0.95))
    assert math.isnan(interpolate(readings, [0.3, None, 0.66], 0.9))  # not measured there


class StepStamp(torch.nn.Module):
    """A model whose one weight is the step it was written at."""

    def __init__(self):
        super().__init__()
        self.step = torch.nn.Parameter(torch.zeros(()))


def scripted(monkeypatch, accuracy_at):
    """Every evaluation on the split named by its `.name` returns a scripted value of the step whose
    weights are being evaluated; what was evaluated is logged."""
    log = []

    def evaluate(model, split, *args, **kwargs):
        step = int(model.step.item())
        log.append((split.name, step))
        return accuracy_at(split.name, step)

    monkeypatch.setattr(curves, "evaluate", evaluate)
    return log


class Named:
    def __init__(self, name):
        self.name = name


def drive(recorder, steps, model=None):
    """The training loop's calls: a check after every step it says is due, and after the last."""
    model = model or StepStamp()
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.step.fill_(step)
        if recorder.due(step) or step == steps:
            recorder(Progress(1, step, 64 * step, model))
    return model


def test_the_recorder_measures_robustness_at_every_checkpoint_and_the_test_only_where_a_level_is_crossed(monkeypatch):
    log = scripted(monkeypatch, lambda name, step: step / 100 if name == "val" else 0.5)
    schedule = Schedule(levels=(0.35,), check_every=10, dense_every=5, dense_margin=0.06)
    measured = []
    recorder = CurveRecorder(schedule, Named("val"), lambda model: measured.append(int(model.step.item())) or
                             {"robustness": model.step.item() / 200}, Named("test"), 1, False)
    model = drive(recorder, 60)
    steps = [row["step"] for row in recorder.rows]
    # Sparse to 30 (0.30 is within 0.06 of 0.35), dense while near it (30, 35, 40), sparse again
    # from 45 (0.45 is not), and the last step.
    assert steps == [10, 20, 30, 35, 40, 45, 55, 60] and measured == steps
    assert [row["robustness"] for row in recorder.rows] == [s / 200 for s in steps]
    # The level 0.35 is first reached at 35 right after 30 (below it): the test split is read at those two.
    tested = [row["step"] for row in recorder.rows if row["test_accuracy"] is not None]
    assert tested == [30, 35] and sorted(s for name, s in log if name == "test") == [30, 35]
    assert int(model.step.item()) == 60  # the previous weights were put back after, and training's untouched


def test_checkpoint_choices_receive_validation_readings_only(monkeypatch):
    """A spy on the schedule and the bracketing: every value they receive is a validation reading,
    never a robustness or a test accuracy (those are scripted to values validation never takes)."""
    scripted(monkeypatch, lambda name, step: {"val": step / 100, "test": 7.0}[name])
    seen = []
    original_interval, original_crossing = Schedule.next_interval, curves.first_crossing

    def spy_interval(self, value):
        seen.append(value)
        return original_interval(self, value)

    def spy_crossing(readings, level):
        seen.extend(readings)
        return original_crossing(readings, level)

    monkeypatch.setattr(Schedule, "next_interval", spy_interval)
    monkeypatch.setattr(curves, "first_crossing", spy_crossing)
    schedule = Schedule(levels=(0.2, 0.4), check_every=8, dense_every=2, dense_margin=0.05)
    recorder = CurveRecorder(schedule, Named("val"), lambda model: {"robustness": 9.0}, Named("test"), 1, False)
    drive(recorder, 50)
    validation = {row["val_accuracy"] for row in recorder.rows}
    assert seen and set(seen) <= validation
    assert {row["robustness"] for row in recorder.rows} == {9.0}


def test_the_untrained_model_is_measured_only_when_a_level_is_crossed_right_after_it(monkeypatch):
    log = scripted(monkeypatch, lambda name, step: {"val": 0.1 if step == 0 else 0.6, "test": 0.55}[name])
    measured = []

    def measure(model):
        measured.append(int(model.step.item()))
        return {"robustness": 0.3}

    for level, crossed in ((0.5, True), (0.05, False)):
        measured.clear()
        schedule = Schedule(levels=(level,), check_every=10, dense_every=10, dense_margin=0.0)
        recorder = CurveRecorder(schedule, Named("val"), measure, Named("test"), 1, False)
        recorder.start(StepStamp())  # step 0
        drive(recorder, 20)
        first = recorder.rows[0]
        assert first["step"] == 0 and first["val_accuracy"] == 0.1
        if crossed:  # bracketed by (0, 10): the step-0 weights are measured and tested after all
            assert measured == [10, 0, 20] and first["robustness"] == 0.3 and first["test_accuracy"] == 0.55
        else:  # 0.05 is below the untrained model's reading: nothing brackets it, nothing more is read
            assert measured == [10, 20] and "robustness" not in first and first["test_accuracy"] is None
    assert ("test", 0) in log


def test_the_recorders_state_survives_torch_save(monkeypatch):
    scripted(monkeypatch, lambda name, step: step / 100)
    schedule = Schedule(levels=(0.25,), check_every=10, dense_every=5, dense_margin=0.1)
    first = CurveRecorder(schedule, Named("val"), lambda model: {}, Named("test"), 1, False)
    drive(first, 20)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as the checkpoint stores it
    saved.seek(0)
    resumed = CurveRecorder(schedule, Named("val"), lambda model: {}, Named("test"), 1, False)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert resumed.rows == first.rows and resumed.next_step == first.next_step == 25
    assert float(resumed.previous_weights["step"]) == 20.0


# --- through the real training loop -------------------------------------------------------------

def synthetic_splits(size: int = 40) -> tuple[Split, Split, Split]:
    generator = torch.Generator().manual_seed(0)

    def split():
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (size,), generator=generator))

    return split(), split(), split()


def learnable_splits(size: int = 40) -> tuple[Split, Split, Split]:
    """Classes balanced, each marked by a bright bar at its own place on a noisy background."""
    def split(seed):
        generator = torch.Generator().manual_seed(seed)
        labels = (torch.arange(size) % 10)[torch.randperm(size, generator=generator)]
        images = torch.randint(0, 64, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        for i, label in enumerate(labels.tolist()):
            row, column = divmod(label, 5)
            images[i, 0, 4 + 10 * row:12 + 10 * row, 1 + 5 * column:5 + 5 * column] = 255
        return Split(images, labels)

    return split(0), split(1), split(2)


def test_every_arm_trains_the_whole_budget_and_the_last_checkpoint_is_the_end():
    config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=2, batch_size=4, device="cpu", progress=False)
    schedule = Schedule(levels=(0.99,), check_every=3, dense_every=1, dense_margin=0.0)
    recorder = CurveRecorder(schedule, synthetic_splits()[1], lambda model: {}, synthetic_splits()[2], 8, False)
    result = train(config, None, build_model(config), None, synthetic_splits(), check=recorder)
    assert result.images_seen == 80  # 2 epochs of 40: a curve never stops training
    # Every 3 steps, and at each epoch's end (steps 10 and 20).
    assert [row["step"] for row in recorder.rows] == [3, 6, 9, 10, 13, 16, 19, 20]
    assert all(0.0 <= row["val_accuracy"] <= 1.0 for row in recorder.rows)
    assert "val_accuracy" not in result.history[-1]  # the recorder reads validation, not the epoch's end


class CountingCheck:
    """A StepCheck whose state is the number of checks it has seen."""

    def __init__(self):
        self.calls = 0
        self.loaded = None

    def due(self, step):
        return step % 3 == 0

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


def test_a_curve_resumed_after_a_crash_records_what_the_uninterrupted_one_does(tmp_path):
    """Real training of a small CNN for 4 epochs on digits it can learn, with a curve and its
    checkpoint; a crash in epoch 2 and a resume give the same rows (readings, measures, crossings,
    test accuracies)."""
    config = TrainConfig(model="cnn_pool", model_options={"conv_channels": (16, 16, 16), "fc_features": (32,)},
                         epochs=4, batch_size=4, lr=0.003, device="cpu", progress=False)
    splits = learnable_splits()
    schedule = Schedule(levels=(0.15, 0.5), check_every=4, dense_every=2, dense_margin=0.05)

    def recorder():
        return CurveRecorder(schedule, splits[1], lambda model: {"robustness": round(
            float(next(model.parameters()).detach().double().sum()), 12)}, splits[2], 8, False)

    def run(check, on_epoch=None, checkpoint=None):
        model = build_model(config)
        check.start(model)
        return train(config, on_epoch, model, checkpoint, splits, check=check)

    straight = recorder()
    run(straight)

    def crash_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recorder(), crash_in_epoch_2, checkpoint)
    resumed = recorder()
    run(resumed, checkpoint=checkpoint)
    assert resumed.rows == straight.rows and len(straight.rows) > 5
    # Both levels were crossed (from chance, 0.1), so the test split was read at their brackets.
    assert sum(row["test_accuracy"] is not None for row in straight.rows) >= 3
