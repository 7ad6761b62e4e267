"""The training step under torch.compile and the per-run algorithm settings (studies/training).

On synthetic splits, so no data files are needed; a tiny CNN keeps inductor's build short. CUDA
variants are in tests/test_cuda.py."""
import math

import pytest
import torch

from studies.training.config import TrainConfig
from studies.training.devices import algorithm_settings, compiles
from studies.training.loop import Split, train

TINY_CNN = {"conv_channels": (4, 4, 4), "fc_features": (8,)}


def synthetic_splits(train_size: int = 40, test_size: int = 20) -> tuple[Split, None, Split]:
    generator = torch.Generator().manual_seed(0)

    def split(size):
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (size,), generator=generator))

    return split(train_size), None, split(test_size)


def tiny(**overrides) -> TrainConfig:
    # 40 images in batches of 16: two full batches (compiled) and a last one of 8 (eager)
    base = dict(model="cnn_pool", model_options=TINY_CNN, epochs=2, batch_size=16, device="cpu", progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def test_compile_auto_means_cuda_only():
    assert compiles(torch.device("cuda"), "auto") and not compiles(torch.device("cpu"), "auto")
    assert compiles(torch.device("cpu"), "on") and not compiles(torch.device("cuda"), "off")
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")
    with pytest.raises(ValueError, match="deterministic"):
        TrainConfig(deterministic="true")


@pytest.mark.e2e  # trains, crashes and resumes a compiled run
def test_a_compiled_run_trains_checkpoints_plain_names_and_resumes_to_the_same_result(tmp_path):
    splits = synthetic_splits()
    config = tiny(compile="on")
    seen = []
    straight = train(config, splits=splits, on_epoch=lambda record, model: seen.append(model))
    assert straight.history[1]["train_loss"] < straight.history[0]["train_loss"]
    # callbacks get the module itself, not a compiled wrapper
    assert all(type(model).__name__ == "BaselineCNN" for model in seen)

    checkpoint = tmp_path / "run.pt"

    def crash_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, splits=splits, on_epoch=crash_in_epoch_2, checkpoint=checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    assert state["model"].keys() == seen[0].state_dict().keys()
    assert not any("_orig_mod" in key for key in state["model"])
    resumed = train(config, splits=splits, checkpoint=checkpoint)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert resumed.test_accuracy == straight.test_accuracy


def test_compiled_and_eager_steps_train_alike():
    splits = synthetic_splits()
    eager = train(tiny(compile="off", epochs=1), splits=splits)
    compiled = train(tiny(compile="on", epochs=1), splits=splits)
    # Fused kernels round differently; dropout draws differ between inductor and eager, so the
    # losses agree loosely (they are about ln 10 here, from random labels).
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=0.05)


def test_algorithm_settings_apply_for_the_run_and_are_restored():
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with algorithm_settings(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
    with algorithm_settings(torch.device("cuda"), deterministic=False):
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


def test_a_deterministic_run_on_the_cpu_equals_a_default_one():
    splits = synthetic_splits()
    default = train(tiny(epochs=1), splits=splits)
    deterministic = train(tiny(epochs=1, deterministic=True), splits=splits)
    assert deterministic.history[0]["train_loss"] == default.history[0]["train_loss"]
    assert not torch.are_deterministic_algorithms_enabled()


def test_tf32_only_where_a_run_is_bf16_and_restored_after():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for tf32 in (False, True):
        with algorithm_settings(torch.device("cuda"), deterministic=False, tf32=tf32):
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (tf32, tf32)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    seen = []
    train(tiny(epochs=1), splits=synthetic_splits(),
          on_epoch=lambda record, model: seen.append(torch.backends.cudnn.allow_tf32))
    assert seen == [False]  # a float32 run is float32 throughout


def test_a_compile_failure_falls_back_to_the_eager_step_with_one_warning(monkeypatch):
    def broken_compile(function, **options):
        def compiled(*args):
            raise RuntimeError("inductor: no working C++ compiler\nlong traceback")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    splits = synthetic_splits()
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no working C.. compiler.*training runs eagerly") as caught:
        fallen_back = train(tiny(compile="on"), splits=splits)
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    eager = train(tiny(compile="off"), splits=splits)
    assert [r["train_loss"] for r in fallen_back.history] == [r["train_loss"] for r in eager.history]

    def unsupported(function, **options):  # torch.compile itself refuses (a Python it does not support)
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*not supported on this Python") as caught:
        refused = train(tiny(compile="on"), splits=splits)
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    assert [r["train_loss"] for r in refused.history] == [r["train_loss"] for r in eager.history]


def test_checkpoints_are_written_every_n_epochs(tmp_path):
    written = []

    def look(record, model):
        written.append((tmp_path / "run.pt").exists())

    train(tiny(epochs=3, checkpoint_every=2), splits=synthetic_splits(), on_epoch=look, checkpoint=tmp_path / "run.pt")
    assert written == [False, False, True]  # looked at before each epoch's save: saved after epoch 2 only


def test_a_backward_that_fails_to_compile_falls_back_too(monkeypatch):
    """Inductor compiles the backward at the first backward(): a failure there (the forward having
    compiled) also falls back, with one warning, and the run trains on eagerly."""

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, loss):
            return loss.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("triton: no working CUDA toolchain")

    def half_broken_compile(function, **options):
        def compiled(*args):
            scores, loss = function(*args)
            return scores, BrokenBackward.apply(loss)
        return compiled

    monkeypatch.setattr(torch, "compile", half_broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no working CUDA toolchain") as caught:
        result = train(tiny(compile="on"), splits=synthetic_splits())
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    assert result.images_seen == 80 and all(math.isfinite(r["train_loss"]) for r in result.history)
