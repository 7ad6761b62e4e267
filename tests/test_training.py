"""Training on the real MNIST files (prepared by `make test`), with small budgets."""
import json

import pytest
import torch

from studies.training.config import TrainConfig
from studies.training.loop import build_model, train

pytestmark = pytest.mark.data


def small(model: str, **overrides) -> TrainConfig:
    base = dict(model=model, train_size=256, test_size=200, epochs=2, batch_size=32, progress=False)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["capsnet", "cnn_pool"])
def test_a_short_training_run_lowers_the_loss(model):
    result = train(small(model))
    first, second = result.history
    assert second["train_loss"] < first["train_loss"]
    assert result.test_images == 200 and result.train_images == 256
    assert 0.0 <= result.test_accuracy <= 1.0 and result.test_error == pytest.approx(1 - result.test_accuracy)
    assert result.params > 0 and result.train_images_per_s > 0


@pytest.mark.e2e
def test_training_is_deterministic_on_cpu():
    config = small("efficient_capsnet", epochs=1, train_size=128, val_size=100)
    a, b = train(config), train(config)
    assert a.test_accuracy == b.test_accuracy
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[0]["val_accuracy"] == b.history[0]["val_accuracy"]


@pytest.mark.e2e
def test_epoch_callback_sees_every_epoch():
    seen = []
    train(small("efficient_capsnet", train_size=64, epochs=3),
          on_epoch=lambda record, model: seen.append(record["epoch"]))
    assert seen == [1, 2, 3]


def test_oversized_subsets_are_rejected():
    with pytest.raises(ValueError, match="exceed"):
        train(small("cnn_pool", train_size=60000, val_size=10))


@pytest.mark.e2e
def test_cli_trains_and_prints_json(run_process):
    done = run_process("studies", "train", "--model", "capsnet", "--routing-iters", "2", "--recon-weight", "0.0005",
                   "--aug", "shift2", "--train-size", "64", "--test-size", "100", "--batch-size", "32",
                   "--epochs", "1", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["config"]["model_options"] == {"routing_iters": 2, "recon_weight": 0.0005}
    assert metrics["params"] == 8_215_568 and metrics["test_images"] == 100
    assert set(metrics) >= {"test_accuracy", "test_error", "history", "train_seconds", "train_images_per_s"}


def test_models_are_initialised_from_the_configured_seed():
    first = build_model(TrainConfig(model="cnn_pool", seed=1))
    torch.rand(10)  # whatever ran before must not matter
    again = build_model(TrainConfig(model="cnn_pool", seed=1))
    other = build_model(TrainConfig(model="cnn_pool", seed=2))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(next(first.parameters()), next(other.parameters()))



@pytest.mark.e2e
def test_a_signal_whose_exception_was_swallowed_still_stops_training_at_the_next_step():
    """A signal landing in a finalizer has its exception ignored by Python; the request it left
    stops the loop anyway."""
    from studies.training import stop

    try:
        stop._on_sigterm(None, None)
    except stop.Interrupted:
        pass  # what Python does with it inside a finalizer
    try:
        with pytest.raises(stop.Interrupted):
            train(small("efficient_capsnet", epochs=1, train_size=64))
    finally:
        stop.clear()
    assert train(small("efficient_capsnet", epochs=1, train_size=64)).train_images == 64
