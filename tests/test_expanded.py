"""Expanded MNIST: digits at random integer positions on a 40x40 canvas."""
from __future__ import annotations

import pytest
import torch

from studies.data.expanded import expanded_test_set, place_at, place_on_canvas


def _marked(batch: int) -> torch.Tensor:
    """Random images whose top-left pixel is the only one equal to 2, to find where they land."""
    images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    images[:, :, 0, 0] = 2.0
    return images


def _positions(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = (out[:, 0] == 2.0).flatten(1).float().argmax(dim=1)
    return flat // out.shape[-1], flat % out.shape[-1]


def test_shape_and_content_are_preserved() -> None:
    images = _marked(64)
    out = place_on_canvas(images, torch.Generator().manual_seed(1))
    assert out.shape == (64, 1, 40, 40) and out.dtype == images.dtype
    # Sums agree up to float summation order; the count of nonzero pixels must match exactly.
    assert torch.allclose(out.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert torch.equal((out != 0).sum(dim=(1, 2, 3)), (images != 0).sum(dim=(1, 2, 3)))
    top, left = _positions(out)
    for i in range(64):  # the image is there, unresampled
        assert torch.equal(out[i, :, top[i] : top[i] + 28, left[i] : left[i] + 28], images[i])


def test_seeded_reproducibility() -> None:
    images = _marked(32)
    a = place_on_canvas(images, torch.Generator().manual_seed(5))
    b = place_on_canvas(images, torch.Generator().manual_seed(5))
    c = place_on_canvas(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_positions_cover_the_whole_range() -> None:
    out = place_on_canvas(_marked(2000), torch.Generator().manual_seed(2))
    top, left = _positions(out)
    assert set(top.tolist()) == set(range(13)) and set(left.tolist()) == set(range(13))
    assert abs(top.float().mean().item() - 6) < 0.5 and abs(left.float().mean().item() - 6) < 0.5


def test_place_at_puts_corners_where_asked() -> None:
    images = _marked(2)
    out = place_at(images, torch.tensor([0, 12]), torch.tensor([12, 0]))
    assert out[0, 0, 0, 12] == 2.0 and out[1, 0, 12, 0] == 2.0


def test_test_set_is_deterministic_uint8() -> None:
    images = (torch.rand(50, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a, b = expanded_test_set(images, seed=3), expanded_test_set(images, seed=3)
    assert a.shape == (50, 40, 40) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, expanded_test_set(images, seed=4))
    assert torch.equal(a.long().sum(dim=(1, 2)), images.long().sum(dim=(1, 2)))


def test_images_larger_than_the_canvas_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        place_on_canvas(torch.zeros(1, 1, 28, 28), torch.Generator(), canvas=20)
