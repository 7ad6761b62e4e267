"""MultiMNIST: the generated set (recipe invariants, reproducibility, overlap, cache) and the
two-digit models (two-positive margin loss, per-digit reconstruction, parameter counts, metrics)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models.capsnet import margin_loss
from models.fields import ConfigError
from models.multimnist import (
    MULTIMNIST_SIDE,
    CapsNetMultiConfig,
    align_to_labels,
    digit_correct,
    pair_correct,
    predict_pair,
    reconstruction_classes,
)
from studies.data import datasets, multimnist
from studies.data.multimnist import (
    CANVAS,
    DESCRIPTION,
    bounding_box_overlap,
    generate,
    load_or_generate,
    mean_overlap,
    mnist_multimnist,
    nonzero_boxes,
)
from studies.data.subsets import stratified_subset


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    return datasets.load("mnist", "test")


@pytest.fixture(scope="module")
def small_set(mnist_test) -> multimnist.MultiMNISTSet:
    images, labels = mnist_test
    return generate(images[:1000], labels[:1000], pairs_per_digit=3, seed=0)


def _unshift(canvas: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """The 28x28 window a digit shifted by (dy, dx) from the centre occupies, per example."""
    return torch.stack([
        canvas[m, 4 + dy : 32 + dy, 4 + dx : 32 + dx] for m, (dy, dx) in enumerate(shifts.tolist())
    ])


# --- the generated set ---------------------------------------------------------------------


def test_recipe_invariants_on_real_digits(mnist_test, small_set) -> None:
    images, labels = mnist_test[0][:1000], mnist_test[1][:1000]
    s = small_set
    assert len(s) == 3000 and CANVAS == MULTIMNIST_SIDE == 36
    for tensor in (s.images, s.first, s.second):
        assert tensor.dtype == torch.uint8 and tensor.shape == (3000, 36, 36)
    assert s.labels.dtype == torch.int64 and s.labels.shape == (3000, 2)
    assert s.shifts.shape == (3000, 2, 2) and s.source_index.shape == (3000, 2)
    # Two digits of different classes, each labelled by its own source digit.
    assert (s.labels[:, 0] != s.labels[:, 1]).all()
    assert torch.equal(s.labels, labels[s.source_index])
    # Pair blocks in order: example j * N + i has digit i as its base.
    assert torch.equal(s.source_index[:, 0], torch.arange(1000).repeat(3))
    # Shifts are integers in [-4, 4] and every value occurs on both axes of both digits.
    assert s.shifts.min() == -4 and s.shifts.max() == 4
    for digit in range(2):
        for axis in range(2):
            assert set(s.shifts[:, digit, axis].tolist()) == set(range(-4, 5))
    # Each digit alone is its source digit moved by its shift, whole (pad 4 >= shift 4).
    assert torch.equal(_unshift(s.first, s.shifts[:, 0]), images[s.source_index[:, 0]])
    assert torch.equal(_unshift(s.second, s.shifts[:, 1]), images[s.source_index[:, 1]])
    for digit, index in ((s.first, 0), (s.second, 1)):
        assert torch.equal(digit.sum(dim=(1, 2), dtype=torch.int64),
                           images[s.source_index[:, index]].sum(dim=(1, 2), dtype=torch.int64))
    # Merged = min(first + second, 255), computed here in int32; saturation does happen.
    expected = (s.first.to(torch.int32) + s.second.to(torch.int32)).clamp(max=255).to(torch.uint8)
    assert torch.equal(s.images, expected)
    assert ((s.first.to(torch.int32) + s.second.to(torch.int32)) > 255).any()
    assert s.targets.shape == (3000, 2, 1, 36, 36) and torch.equal(s.targets[:, 1, 0], s.second)


def test_a_shift_moves_the_digit_down_and_right() -> None:
    digit = torch.zeros(2, 28, 28, dtype=torch.uint8)
    digit[:, 0, 0] = 200
    placed = multimnist.place(digit, torch.tensor([[0, 0], [3, -2]]))
    assert placed.shape == (2, 36, 36)
    assert placed[0, 4, 4] == 200 and placed[0].sum() == 200
    assert placed[1, 7, 2] == 200 and placed[1].sum() == 200


def test_partners_are_uniform_over_the_other_classes() -> None:
    # Classes 0, 0, 1, 2, 2, 2: a class-0 digit pairs with digits 2..5 (1/4 each), a class-2
    # digit with 0..2 (1/3 each). 2000 draws: 4 standard deviations are under 90.
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    s = generate(images, labels, pairs_per_digit=2000, seed=3)
    base, partner = s.source_index[:, 0], s.source_index[:, 1]
    of_zero = torch.bincount(partner[base == 0], minlength=6)
    assert of_zero[:2].sum() == 0 and (of_zero[2:] - 500).abs().max() < 90
    of_five = torch.bincount(partner[base == 5], minlength=6)
    assert of_five[3:].sum() == 0 and (of_five[:3] - 2000 / 3).abs().max() < 90


def test_same_seed_same_set_other_seed_other_set_any_chunking(mnist_test) -> None:
    images, labels = mnist_test[0][:300], mnist_test[1][:300]
    a = generate(images, labels, 2, seed=11)
    b = generate(images, labels, 2, seed=11, chunk=37)  # chunks of pixel work change nothing
    for name in ("images", "first", "second", "labels", "shifts", "source_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = generate(images, labels, 2, seed=12)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.source_index, c.source_index)
    # Pair blocks are drawn in order: one pair per digit is a prefix of two.
    one = generate(images, labels, 1, seed=11)
    assert torch.equal(one.images, a.images[:300]) and torch.equal(one.shifts, a.shifts[:300])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_set_is_the_same_on_the_gpu(mnist_test) -> None:
    images, labels = mnist_test[0][:500], mnist_test[1][:500]
    on_cpu = generate(images, labels, 2, seed=5)
    on_gpu = generate(images, labels, 2, seed=5, device="cuda", chunk=333)
    assert torch.equal(on_cpu.images, on_gpu.images) and torch.equal(on_cpu.second, on_gpu.second)


def test_test_set_is_built_from_mnist_test_digits_only(tmp_path: Path, mnist_test) -> None:
    images, labels = mnist_test
    s = mnist_multimnist("test", pairs_per_digit=2, seed=0, limit=400, cache_dir=tmp_path)
    # The 400 source digits are a class-stratified random subset of the test digits, not the first 400.
    chosen = stratified_subset(labels, 400, 0)
    images, labels = images[chosen], labels[chosen]
    assert len(s) == 800 and int(s.source_index.max()) < 400
    assert torch.equal(_unshift(s.first, s.shifts[:, 0]), images[s.source_index[:, 0]])
    assert torch.equal(_unshift(s.second, s.shifts[:, 1]), images[s.source_index[:, 1]])
    assert s.source_sha256 == multimnist.source_fingerprint(images, labels)


def test_bad_inputs_are_refused() -> None:
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="uint8"):
        generate(images.float(), labels, 1, 0)
    with pytest.raises(ValueError, match="labels"):
        generate(images, labels[:3], 1, 0)
    with pytest.raises(ConfigError, match="pairs_per_digit"):
        generate(images, labels, 0, 0)
    with pytest.raises(ValueError, match="two classes"):
        generate(images, torch.zeros(4, dtype=torch.int64), 1, 0)
    with pytest.raises(ConfigError, match="limit"):
        mnist_multimnist("test", 1, 0, limit=1)


# --- overlap -------------------------------------------------------------------------------


def test_overlap_on_a_hand_worked_pair() -> None:
    first = torch.zeros(3, 36, 36, dtype=torch.uint8)
    second = torch.zeros_like(first)
    first[0, 0:10, 0:10] = 9  # rows 0-9, cols 0-9: area 100
    second[0, 5:15, 5:10] = 9  # rows 5-14, cols 5-9: area 50; shared rows 5-9, cols 5-9: 25
    first[1, 0, 0] = second[1, 0, 0] = 1  # corners of 1-pixel boxes only: the boxes, not the pixels
    first[1, 20, 20] = second[1, 20, 20] = 1
    first[2, 3, 3] = 1  # second digit empty
    assert nonzero_boxes(second).tolist() == [[5, 14, 5, 9], [0, 20, 0, 20], [0, -1, 0, -1]]
    assert bounding_box_overlap(first, second).tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert bounding_box_overlap(first, second, "union").tolist() == pytest.approx([0.2, 1.0, 0.0])


def test_mean_overlap_of_20x20_boxes_matches_the_recipe_analytically() -> None:
    # Two 20x20 boxes displaced by d = s1 - s2 per axis overlap (20 - |dy|)(20 - |dx|) / 400;
    # s1, s2 uniform in [-4, 4] give E|d| = 240/81, so the mean is (1 - 240/81/20)^2 = 0.72565.
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    images[:, 4:24, 4:24] = 255
    s = generate(images, torch.arange(10), pairs_per_digit=2000, seed=1)
    expected = (1 - 240 / 81 / 20) ** 2
    assert mean_overlap(s) == pytest.approx(expected, abs=0.005)


def test_mean_overlap_of_real_pairs_is_plausible(small_set) -> None:
    # Measured 0.726-0.727 on 10k test pairs; the paper says "on average 80%" (see the docstring).
    overlap = bounding_box_overlap(small_set.first, small_set.second)
    assert overlap.shape == (3000,) and overlap.min() >= 0 and overlap.max() <= 1
    assert 0.68 < mean_overlap(small_set) < 0.78
    assert mean_overlap(small_set, "union") < mean_overlap(small_set)


# --- cache ---------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_the_recipe(tmp_path: Path, monkeypatch, mnist_test, count_calls) -> None:
    images, labels = mnist_test[0][:200], mnist_test[1][:200]
    calls = count_calls(multimnist, "generate")
    first = load_or_generate(images, labels, 2, seed=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    stamp = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good file is read without complaint
        again = load_or_generate(images, labels, 2, seed=1, cache_dir=tmp_path)
    assert len(calls) == 1 and path.stat().st_mtime_ns == stamp
    assert torch.equal(again.images, first.images) and torch.equal(again.shifts, first.shifts)
    assert again.metadata() == first.metadata()
    load_or_generate(images, labels, 2, seed=2, cache_dir=tmp_path)
    load_or_generate(images, labels, 3, seed=1, cache_dir=tmp_path)
    load_or_generate(images[:-1], labels[:-1], 2, seed=1, cache_dir=tmp_path)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.pt"))) == 4


def test_a_cache_file_with_one_changed_pixel_is_reported_and_replaced(tmp_path: Path, monkeypatch, mnist_test, count_calls) -> None:
    # Torn, foreign and misshapen files of every generated set: tests/test_generated_cache.py. This
    # one loads and has the right metadata and shapes; only MultiMNIST's own invariant
    # (merged = min(first + second, 255)) catches it.
    images, labels = mnist_test[0][:100], mnist_test[1][:100]
    original = load_or_generate(images, labels, 1, seed=4, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    payload = torch.load(path, weights_only=True)
    payload["images"][7, 18, 18] ^= 1
    torch.save(payload, path)
    calls = count_calls(multimnist, "generate")
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = load_or_generate(images, labels, 1, seed=4, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(rebuilt.images, original.images)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # replaced in place, no temp left
    assert torch.load(path, weights_only=True)["metadata"]["description"] == DESCRIPTION


# --- the two-digit models ------------------------------------------------------------------


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper() -> None:
    # Paper section 6: CapsNet 11.36M, baseline 24.56M. CapsNet at 36x36: conv1 20,992, PrimaryCaps
    # 5,308,672, W 3200 x 10 x 8 x 16 = 4,096,000, decoder 82,432 + 525,312 + 1,328,400.
    capsnet = models.create("capsnet_multi")
    assert _params(capsnet) == 11_361_808 and abs(_params(capsnet) / 11.36e6 - 1) < 0.001
    # Official baseline at 36x36: conv 13,312, conv 3,277,056, FC 256*9*9 -> 1024 21,234,688, out 10,250.
    cnn = models.create("cnn_multi")
    assert _params(cnn) == 24_535_306 and abs(_params(cnn) / 24.56e6 - 1) < 0.0011  # 0.10% under


def test_multi_label_contract_is_visible_from_the_registry() -> None:
    for name in ("capsnet_multi", "cnn_multi"):
        assert models.config_class(name).labels_per_example == 2
        assert "labels_per_example" not in models.option_names(name)  # a class fact, not an option
    assert models.create("cnn_multi").config.channels_last


def test_two_positive_margin_loss_by_hand() -> None:
    lengths = torch.tensor([[0.8, 0.95, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]])
    labels = torch.tensor([[0, 1]])
    # Present: class 0 (0.9 - 0.8)^2 = 0.01, class 1 above 0.9: 0. Absent: class 2
    # 0.5 (0.2 - 0.1)^2 = 0.005; classes 3 and 9 at or below 0.1: 0. Total 0.015.
    config = CapsNetMultiConfig()
    assert margin_loss(lengths, labels, config).item() == pytest.approx(0.015)
    assert margin_loss(lengths, labels.flip(1), config).item() == pytest.approx(0.015)
    official = CapsNetMultiConfig(margin_convention="official")
    assert margin_loss(lengths, labels, official).item() == pytest.approx(0.5 * 0.015 / 10)
    # With only class 0 positive, class 1 is absent: 0.01 + 0.5 (0.95 - 0.1)^2 + 0.005.
    single = margin_loss(lengths, torch.tensor([0]), config).item()
    assert single == pytest.approx(0.01 + 0.5 * 0.85**2 + 0.005)
    assert margin_loss(lengths, torch.tensor([[0, 0]]), config).item() == pytest.approx(single)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_pair_of_one_class_is_the_single_label_margin_loss(convention: str) -> None:
    # Both models share one margin loss (Sabour et al. 2017, eq. 4); a pair naming one class twice
    # is that class alone present, so the two-digit model's loss must be the one-digit model's.
    torch.manual_seed(0)
    options = {"decoder": False, "margin_convention": convention}
    multi, single = models.create("capsnet_multi", **options), models.create("capsnet", **options)
    # Lengths on both sides of m- and m+, so the present and the absent terms both count.
    output = models.ModelOutput(scores=torch.rand(4, 10))
    labels = torch.tensor([3, 0, 9, 3])
    pair = labels.unsqueeze(1).expand(4, 2)
    expected = margin_loss(output.scores, labels, single.config).mean()
    assert torch.equal(multi.loss(output, None, pair).total, expected)
    assert torch.equal(single.loss(output, None, labels).total, expected)


class _ClassValueDecoder(nn.Module):
    """Stands in for the decoder's layers: records its (masked) input and paints every pixel
    with (the index of the one nonzero capsule block) / 10."""

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        self.seen = masked.detach().clone()
        chosen = masked.view(masked.shape[0], 10, 16).norm(dim=-1).argmax(dim=1)
        return (chosen.float() / 10).unsqueeze(1).expand(-1, 36 * 36) + 0 * masked.sum(1, keepdim=True)


def test_each_digit_is_reconstructed_from_its_own_capsule_and_two_sses_are_summed() -> None:
    torch.manual_seed(0)
    model = models.create("capsnet_multi", routing_iters=1).train()
    model.decoder.net = _ClassValueDecoder()
    images = torch.rand(2, 1, 36, 36)
    labels = torch.tensor([[3, 7], [0, 9]])
    output = model(images, labels)
    assert output.reconstruction.shape == (2, 2, 1, 36, 36)
    # The decoder saw, for example b and slot k (row 2b + k), only capsule labels[b, k].
    with torch.no_grad():
        capsules = model.capsules(images)
    seen = model.decoder.net.seen.view(2, 2, 10, 16)
    for b in range(2):
        for k in range(2):
            chosen = labels[b, k].item()
            assert torch.allclose(seen[b, k, chosen], capsules[b, chosen], atol=1e-6)
            others = [c for c in range(10) if c != chosen]
            assert seen[b, k, others].abs().max() == 0
    # Targets: digit 0 all black, digit 1 all white. Slot values are class / 10, so the SSEs are
    # 1296 * [(0.3 - 0)^2 + (0.7 - 1)^2] = 233.28 and 1296 * [0 + (0.9 - 1)^2] = 12.96; mean 123.12.
    targets = torch.zeros(2, 2, 1, 36, 36)
    targets[:, 1] = 1.0
    terms = model.loss(output, targets, labels)
    assert terms.parts["reconstruction_sse"].item() == pytest.approx(123.12, rel=1e-5)
    margin = margin_loss(output.scores, labels, model.config).mean()
    assert terms.total.item() == pytest.approx(margin.item() + 0.0005 * 123.12, rel=1e-5)
    with pytest.raises(ValueError, match="targets shaped"):
        model.loss(output, targets[:, :1], labels)
    with pytest.raises(TypeError, match="float"):
        model.loss(output, targets.to(torch.uint8), labels)


def test_evaluation_reconstructs_the_two_longest_capsules_aligned_to_the_labels() -> None:
    scores = torch.tensor([
        [0.1, 0.9, 0.0, 0.8, 0, 0, 0, 0, 0, 0],  # top two 1, 3
        [0.7, 0.1, 0.0, 0.0, 0, 0, 0, 0, 0, 0.6],  # top two 0, 9
        [0.7, 0.1, 0.0, 0.0, 0, 0, 0, 0, 0.8, 0],  # top two 8, 0
    ])
    labels = torch.tensor([[3, 1], [5, 0], [8, 2]])
    assert predict_pair(scores).tolist() == [[1, 3], [0, 9], [8, 0]]
    # 1, 3 against labels 3, 1: swapped into the labels' slots; 0 belongs in slot 1; 8 in slot 0.
    assert align_to_labels(predict_pair(scores), labels).tolist() == [[3, 1], [9, 0], [8, 0]]
    assert reconstruction_classes(scores, labels, training=False).tolist() == [[3, 1], [9, 0], [8, 0]]
    assert reconstruction_classes(scores, None, training=False).tolist() == [[1, 3], [0, 9], [8, 0]]
    assert reconstruction_classes(scores, labels, training=True).tolist() == labels.tolist()
    assert reconstruction_classes(scores, labels, False, "true").tolist() == labels.tolist()


def test_pair_metric_needs_both_digits_in_any_order() -> None:
    labels = torch.tensor([[3, 7], [3, 7], [3, 7], [3, 7], [3, 7]])
    pred = torch.tensor([[3, 7], [7, 3], [3, 5], [5, 7], [3, 3]])
    assert pair_correct(pred, labels).tolist() == [True, True, False, False, False]
    assert digit_correct(pred, labels).tolist() == [
        [True, True], [True, True], [True, False], [False, True], [True, False],
    ]
    assert digit_correct(pred, labels).float().mean().item() == pytest.approx(7 / 10)


def test_cnn_losses_by_hand() -> None:
    model = models.create("cnn_multi")
    logits = torch.tensor([[2.0, -1.0, 0.5] + [0.0] * 7])
    labels = torch.tensor([[0, 2]])

    def bce(x: float, t: float) -> float:  # -[t log s(x) + (1 - t) log(1 - s(x))]
        return math.log1p(math.exp(x)) - t * x

    values = logits[0].tolist()
    two_hot = [1.0 if k in (0, 2) else 0.0 for k in range(10)]
    output = models.ModelOutput(scores=logits)
    expected = sum(bce(x, t) for x, t in zip(values, two_hot))
    assert model.loss(output, None, labels).total.item() == pytest.approx(expected, rel=1e-6)
    official = models.create("cnn_multi", loss="official_sigmoid")
    expected_official = sum(bce(x, t / 2) for x, t in zip(values, two_hot)) / 10
    assert official.loss(output, None, labels).total.item() == pytest.approx(expected_official, rel=1e-6)


@pytest.mark.parametrize("name", ["capsnet_multi", "cnn_multi"])
def test_forward_backward_at_batch_two(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name).train()
    images = torch.rand(2, 1, 36, 36)
    labels = torch.tensor([[1, 4], [7, 0]])
    targets = torch.rand(2, 2, 1, 36, 36)
    output = model(images, labels)
    assert output.scores.shape == (2, 10)
    terms = model.loss(output, targets, labels)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    for pname, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), pname
    assert model.predict_pair(output.scores).shape == (2, 2)
    model.eval()
    with torch.inference_mode():
        evaluated = model(images)
    if name == "capsnet_multi":
        assert evaluated.reconstruction.shape == (2, 2, 1, 36, 36)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(images, torch.tensor([1, 4]))


def test_configs_are_checked() -> None:
    with pytest.raises(ConfigError, match="eval_reconstruction"):
        models.create("capsnet_multi", eval_reconstruction="labels")
    with pytest.raises(ConfigError, match="loss"):
        models.create("cnn_multi", loss="softmax")
    with pytest.raises(ConfigError, match="input_size"):
        models.create("cnn_multi", input_size=30)  # pooled twice: a multiple of 4
