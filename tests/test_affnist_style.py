"""The generated affNIST-style set: reproducible, inside the frame, cached by its parameters."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from studies.data import affnist_style
from studies.data.affnist_style import DESCRIPTION, AffineRanges, generate, load_or_generate


def _digits(count: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth MNIST-like blobs in a 20x20 box at varied places, so bilinear mass is well kept."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = 10 + 8 * torch.rand(count, 2, generator=generator)
    blobs = torch.exp(-((ys - centres[:, :1, None]) ** 2 + (xs - centres[:, 1:, None]) ** 2) / 18)
    images = (255 * blobs).round().to(torch.uint8)
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[4:24, 4:24] = True  # MNIST digits sit in a 20x20 box; keep the fixtures honest to that
    images = images * box
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


def test_same_seed_and_ranges_give_bit_identical_sets() -> None:
    images, labels = _digits()
    a = generate(images, labels, copies=3, seed=7)
    b = generate(images, labels, copies=3, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.params.rotation_deg, b.params.rotation_deg)
    assert a.images.shape == (72, 40, 40) and a.images.dtype == torch.uint8


def test_different_seed_differs() -> None:
    images, labels = _digits()
    assert not torch.equal(generate(images, labels, seed=0).images, generate(images, labels, seed=1).images)


def test_labels_and_source_indices_are_preserved_per_copy_block() -> None:
    images, labels = _digits()
    result = generate(images, labels, copies=4, seed=0)
    assert result.labels.dtype == torch.int64
    assert torch.equal(result.labels, labels.repeat(4))
    assert torch.equal(result.source_index, torch.arange(24).repeat(4))
    # Copy blocks are drawn in order, so fewer copies are a prefix of more.
    assert torch.equal(generate(images, labels, copies=1, seed=0).images, result.images[:24])


def test_parameters_stay_in_the_ranges() -> None:
    images, labels = _digits(200)
    ranges = AffineRanges(rotation_deg=10, shear=0.1, scale_min=0.9, scale_max=1.1)
    params = generate(images, labels, ranges, seed=3).params
    assert params.rotation_deg.abs().max() <= 10 and params.shear.abs().max() <= 0.1
    for scale in (params.scale_x, params.scale_y):
        assert 0.9 <= scale.min() and scale.max() <= 1.1
    # Translation is spread, not stuck at the centre.
    assert params.translate_x.std() > 2 and params.translate_y.std() > 2


def test_digits_stay_inside_the_frame_and_keep_their_mass() -> None:
    images, labels = _digits(64)
    result = generate(images, labels, copies=4, seed=5)
    out = result.images
    border = torch.cat([out[:, 0, :], out[:, -1, :], out[:, :, 0], out[:, :, -1]], dim=1)
    assert int(border.max()) == 0 and result.clipped == 0
    source_mass = images.double().sum(dim=(1, 2))[result.source_index]
    expected = source_mass * (result.params.scale_x * result.params.scale_y).double()
    ratio = out.double().sum(dim=(1, 2)) / expected
    assert ratio.min() > 0.95 and ratio.max() < 1.05
    # The translation range is used to its ends: some digits come close to an edge.
    near_edge = torch.cat([out[:, 1:3, :], out[:, -3:-1, :]], dim=1).flatten(1).amax(dim=1)
    assert (near_edge > 0).any()


def test_a_digit_at_the_corner_of_its_image_is_still_kept_whole() -> None:
    # A full-mass 28x28 square cannot fit after scaling 1.2; one in the corner of a 28x28
    # image can, so the box must come from the nonzero pixels, not from the image frame.
    images = torch.zeros(8, 28, 28, dtype=torch.uint8)
    images[:, 0:12, 0:12] = 255
    result = generate(images, torch.zeros(8, dtype=torch.int64), AffineRanges(scale_min=1.2, scale_max=1.2), copies=4)
    out = result.images
    assert result.clipped == 0 and int(torch.cat([out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1]], 1).max()) == 0


def test_a_digit_too_large_to_fit_is_centred_and_counted() -> None:
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    result = generate(images, torch.zeros(2, dtype=torch.int64), AffineRanges(scale_min=1.5, scale_max=1.5))
    assert result.clipped == 2
    assert result.params.translate_x.abs().max() < 1e-4 and result.params.translate_y.abs().max() < 1e-4


def test_description_never_says_plain_affnist() -> None:
    images, labels = _digits(4)
    result = generate(images, labels)
    assert result.description == DESCRIPTION == "affNIST-style (generated)"
    meta = result.metadata()
    assert meta["description"] == DESCRIPTION and meta["seed"] == 0
    assert meta["ranges"] == {"rotation_deg": 20.0, "shear": 0.2, "scale_min": 0.8, "scale_max": 1.2}


@pytest.mark.parametrize(
    "kwargs", [dict(rotation_deg=-1), dict(shear=-0.1), dict(scale_min=0), dict(scale_min=1.3), dict(shear=float("nan"))]
)
def test_bad_ranges_are_rejected(kwargs) -> None:
    with pytest.raises(ValueError, match="AffineRanges"):
        AffineRanges(**kwargs)


def test_cache_is_reused_when_unchanged_and_rebuilt_when_ranges_change(tmp_path: Path, monkeypatch, count_calls) -> None:
    images, labels = _digits()
    calls = count_calls(affnist_style, "generate")
    first = load_or_generate(images, labels, copies=2, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(calls) == 1 and len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    again = load_or_generate(images, labels, copies=2, seed=1, cache_dir=tmp_path)
    assert len(calls) == 1 and files[0].stat().st_mtime_ns == stamp
    assert torch.equal(first.images, again.images) and torch.equal(first.params.shear, again.params.shear)
    assert again.metadata() == first.metadata()

    other = load_or_generate(images, labels, replace(AffineRanges(), rotation_deg=10.0), copies=2, seed=1, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.pt"))) == 2
    assert other.ranges.rotation_deg == 10.0 and not torch.equal(other.images, first.images)

    for change in (dict(seed=2), dict(copies=3)):
        load_or_generate(images, labels, **{**dict(copies=2, seed=1), **change}, cache_dir=tmp_path)
    load_or_generate(images[:-1], labels[:-1], copies=2, seed=1, cache_dir=tmp_path)
    assert len(calls) == 5


def test_bad_inputs_are_one_line_errors() -> None:
    images, labels = _digits(4)
    with pytest.raises(ValueError, match="uint8"):
        generate(images.float(), labels)
    with pytest.raises(ValueError, match="labels"):
        generate(images, labels[:3])
    with pytest.raises(ValueError, match="copies"):
        generate(images, labels, copies=0)
