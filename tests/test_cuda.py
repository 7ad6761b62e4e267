"""The models, routing, training and the bench on a CUDA device (`make gpu-check` runs these; every
test is marked `cuda` and skipped where CUDA is unavailable).

Comparisons with the CPU run the CNNs in float64 and CapsNet in float32 with cuDNN's TF32 turned
off (CapsNet routes in float32 whatever its input, so it has no float64 form); either way the two
devices agree to rounding.
"""
import contextlib
import json
import warnings
from pathlib import Path

import pytest
import torch

import models
from models.routing import votes_and_route
from studies.training import curves
from studies.training.config import TrainConfig
from studies.training.curves import CurveRecorder, Schedule
from studies.training.optimizer import adam
from studies.training.loop import Split, build_model, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]
TINY_CNN = {"conv_channels": (16, 16, 16), "fc_features": (32,)}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _batch(size: int, device, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 1, 28, 28, generator=generator, dtype=dtype)
    return images.to(device), torch.randint(0, 10, (size,), generator=generator).to(device)


@contextlib.contextmanager
def _no_tf32():
    """float32 convolutions in float32 (cuDNN may use TF32 for them by default)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _splits(train_size: int, test_size: int = 64) -> tuple[Split, None, Split]:
    """MNIST-shaped uint8 images and labels on the GPU: a training run without the data files."""
    generator = torch.Generator().manual_seed(0)

    def split(size):
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images.to(CUDA), torch.randint(0, 10, (size,), generator=generator).to(CUDA))

    return split(train_size), None, split(test_size)


@pytest.mark.parametrize("name", ["capsnet", "cnn_pool", "cnn_paper"])
def test_forward_and_backward_on_cuda_match_the_cpu(name):
    capsnet = name == "capsnet"
    dtype = torch.float32 if capsnet else torch.float64
    torch.manual_seed(0)
    # The CNNs in eval mode: no dropout, whose draws differ by device. CapsNet (no dropout) in
    # training mode, so the decoder reconstructs the labelled class, not a near-tie argmax.
    cpu_model = models.create(name).to(dtype).train(capsnet)
    cuda_model = models.create(name).to(dtype).train(capsnet)
    cuda_model.load_state_dict(cpu_model.state_dict())
    cuda_model.to(CUDA)
    results = []
    for model, device in ((cpu_model, "cpu"), (cuda_model, CUDA)):
        images, labels = _batch(4, device, dtype=dtype)
        with _no_tf32():
            output = model(images, labels)
            model.loss(output, images, labels).total.backward()
        results.append((output.scores, {n: p.grad for n, p in model.named_parameters()}))
    (cpu_scores, cpu_grads), (cuda_scores, cuda_grads) = results
    assert cuda_scores.device.type == "cuda" and cuda_scores.shape == (4, 10)
    # The CNNs' scores are float64 throughout; their loss, like CapsNet's, is taken in float32, so
    # every gradient carries float32 rounding.
    assert _relative(cuda_scores, cpu_scores) < (1e-4 if capsnet else 1e-9)
    for parameter, grad in cuda_grads.items():
        assert grad.device.type == "cuda" and torch.isfinite(grad).all(), parameter
        assert _relative(grad, cpu_grads[parameter]) < 1e-4, parameter


@pytest.mark.parametrize("iters, detach_inner", [(1, False), (3, False), (3, True)])
def test_routing_on_cuda_gives_the_cpu_outputs_and_gradients(iters, detach_inner):
    """The hand-written routing (PyTorch ops on one block of all children on the GPU, the C++ sweeps
    on the CPU where they are built: batch 17 is above their minimum) against itself across
    devices; W is 100x its init so that the couplings move far from uniform and every term of
    the gradient counts."""
    generator = torch.Generator().manual_seed(iters)
    u = 0.1 * torch.randn(17, 1152, 8, generator=generator)
    weight = torch.randn(1152, 10, 8, 16, generator=generator)
    grad_v = torch.randn(17, 10, 16, generator=generator)
    results = []
    for device in ("cpu", CUDA):
        inputs = [u.to(device).requires_grad_(), weight.to(device).requires_grad_()]
        couplings: list[torch.Tensor] = []
        v = votes_and_route(*inputs, iters, detach_inner, couplings)
        grads = torch.autograd.grad(v, inputs, grad_v.to(device))
        results.append([v, *grads, *couplings])
    if iters > 1:
        assert (results[0][-1] - 0.1).abs().max() > 0.05  # routing is not a no-op here
    # float32 rounding in different orders (C++ sweeps, one GPU block); a wrong term is O(1)
    for what, cpu, cuda in zip(["v", "grad u", "grad W"] + [f"c{t}" for t in range(iters)], *results):
        assert _relative(cuda, cpu) < 1e-4, what


@pytest.mark.parametrize("name", ["capsnet", "cnn_pool", "cnn_paper"])
def test_a_bf16_autocast_training_step_matches_float32_to_bf16_precision(name):
    """Autocast changes the precision of the convolutions and linear layers, nothing else: the
    loss within 1%, the gradient pointing the same way, gradients and loss in float32; then an
    Adam step stays finite. Dropout is off for the comparison: CUDA's dropout kernel draws its
    masks differently for bf16 and float32 tensors (it handles 8 bf16 but 4 float32 elements per
    thread), so the same seed gives different masks."""
    torch.manual_seed(0)
    model = models.create(name).to(CUDA).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    images, labels = _batch(32, CUDA)
    results = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            output = model(images, labels)
            loss = model.loss(output, images, labels).total
        loss.backward()
        assert loss.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]).double()))
    (loss32, grad32), (loss16, grad16) = results
    assert abs(loss16 - loss32) < 0.01 * abs(loss32)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0).item() > 0.99
    adam(model.parameters(), 1e-3).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_training_step_makes_no_host_synchronisation():
    """Syncs counted over whole runs of 2 and 6 steps are the same: none of them is per step (the
    fixed ones are the end of the epoch and the evaluation)."""

    def syncs(steps: int) -> int:
        config = TrainConfig(model="capsnet", epochs=1, batch_size=32, bf16=True, compile="off", device="cuda",
                             progress=False, augmentation="affine")
        splits = _splits(32 * steps)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(config, splits=splits)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing CUDA operation" in str(w.message) for w in caught)

    syncs(2)  # first use: cuDNN's benchmark search, cuBLAS handles
    assert syncs(6) == syncs(2)


class _IdleCheck:
    """A StepCheck that looks at nothing: what a curve recorder costs beyond its checks is measured
    against it."""

    def __init__(self, every: int):
        self.every = every

    def due(self, step):
        return step % self.every == 0

    def __call__(self, progress):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_between_checkpoints_a_curve_adds_no_host_synchronisation(monkeypatch):
    """The recorder's work happens at its checkpoints only: a run with it (validation scripted, so
    its checkpoints read nothing from the device) synchronises as often as one with a check that
    does nothing at the same steps."""
    monkeypatch.setattr(curves, "evaluate", lambda *args, **kwargs: 0.5)

    def syncs(check) -> int:
        config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=1, batch_size=16, compile="off",
                             device="cuda", progress=False)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(config, splits=_splits(16 * 12), check=check)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing CUDA operation" in str(w.message) for w in caught)

    schedule = Schedule(levels=(0.9,), check_every=4, dense_every=4, dense_margin=0.0)
    syncs(_IdleCheck(4))  # first use
    assert syncs(CurveRecorder(schedule, None, lambda model: {}, None, 16, False)) == syncs(_IdleCheck(4))


def test_a_level_crossed_on_cuda_is_tested_at_the_kept_weights_of_the_previous_checkpoint(monkeypatch):
    """Validation (scripted) crosses the level between the checkpoints at steps 4 and 8: the test
    split is evaluated at both, the one at 4 from weights kept on the device, and training goes on
    from step 8's weights."""
    config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=1, batch_size=16, compile="off",
                         device="cuda", progress=False)
    train_split, _, val_split = _splits(16 * 12, 16)
    test_split = _splits(16, 32)[2]
    weights_at: dict[int, dict] = {}
    tested: list[dict] = []

    def evaluate(model, split, *args, **kwargs):
        if split is test_split:
            tested.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return 0.5
        return 0.2 if len(weights_at) < 2 else 0.9

    class Recording(CurveRecorder):
        def __call__(self, progress):
            weights_at[progress.step] = {k: v.detach().clone() for k, v in progress.model.state_dict().items()}
            super().__call__(progress)

    monkeypatch.setattr(curves, "evaluate", evaluate)
    schedule = Schedule(levels=(0.5,), check_every=4, dense_every=4, dense_margin=0.0)
    recorder = Recording(schedule, val_split, lambda model: {}, test_split, 16, False)
    model = build_model(config)
    train(config, splits=(train_split, val_split, test_split), model=model, check=recorder)
    assert [row["step"] for row in recorder.rows][:3] == [4, 8, 12]
    assert [row["test_accuracy"] for row in recorder.rows][:3] == [0.5, 0.5, None]
    assert all(v.device.type == "cuda" for v in recorder.previous_weights.values())
    assert all(torch.equal(tested[1][k], v) for k, v in weights_at[4].items())  # the kept step-4 weights
    assert all(torch.equal(tested[0][k], v) for k, v in weights_at[8].items())


def test_a_short_compiled_training_run_on_cuda_trains_as_the_eager_one():
    """compile "auto" compiles on CUDA; it changes the speed, not the run. CapsNet has no dropout, so
    the two runs differ only by the rounding of fused bf16 kernels. Batch 128 and bf16, as
    `make gpu-check` trains next (inductor's cache then serves that compilation)."""
    splits = _splits(320)  # two compiled steps of 128 and a last, eager one of 64 per epoch
    runs = {}
    for setting in ("auto", "off"):
        config = TrainConfig(model="capsnet", epochs=2, batch_size=128, bf16=True, compile=setting, device="cuda",
                             progress=False)
        runs[setting] = train(config, splits=splits)
    compiled, eager = runs["auto"], runs["off"]
    assert compiled.device == torch.cuda.get_device_name(CUDA) and compiled.images_seen == 640
    for ours, theirs in zip(compiled.history, eager.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=2e-2)


def test_resuming_on_cuda_gives_the_uninterrupted_result(tmp_path):
    """cnn_pool's dropout draws from the CUDA generator, which the checkpoint carries."""
    config = TrainConfig(model="cnn_pool", model_options=TINY_CNN, epochs=2, batch_size=16, device="cuda",
                         compile="off", deterministic=True, progress=False)
    splits = _splits(48)
    straight = train(config, splits=splits)
    checkpoint = tmp_path / "run.pt"

    def crash_in_epoch_2(record, model):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, splits=splits, on_epoch=crash_in_epoch_2, checkpoint=checkpoint)
    assert "cuda" in torch.load(checkpoint, weights_only=True)["rng"]
    torch.cuda.manual_seed(12345)  # whatever ran in between must not matter
    resumed = train(config, splits=splits, checkpoint=checkpoint)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert resumed.test_accuracy == straight.test_accuracy


@pytest.mark.e2e
def test_the_bench_runs_end_to_end_on_cuda(tmp_path, run_process):
    done = run_process("bench", "--device", "cuda", "--profile", "smoke", "--json", "--out", tmp_path,
                       env={"PYTHONPATH": ROOT}, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert {row["device"] for row in rows} == {"cuda"} and all(row["images_per_s"] > 0 for row in rows)
    routing = {(row["model"], row["mode"]) for row in rows if row["section"] == "routing"}
    assert ("reference_c_plain", "train") in routing and ("capsnet", "train") in routing
    assert (tmp_path / "throughput-cuda-fp32.md").exists()
