import pytest
import torch

from studies.data.augment import AffineParams, affine_matrices, inverse_affine, parse_augmentation, rotate, shift


def test_shift_moves_pixels_by_integer_offsets_with_zero_fill():
    image = torch.zeros(2, 1, 8, 8)
    image[:, 0, 3, 4] = 1.0
    out = shift(image, torch.tensor([2, -1]), torch.tensor([-2, 1]), pad=2)
    assert out[0, 0, 5, 2] == 1.0 and out.sum(dim=(1, 2, 3))[0] == 1.0
    assert out[1, 0, 2, 5] == 1.0 and out.sum(dim=(1, 2, 3))[1] == 1.0
    edge = torch.zeros(1, 1, 8, 8)
    edge[0, 0, 0, 0] = 1.0
    assert shift(edge, torch.tensor([-1]), torch.tensor([0]), pad=2).sum() == 0  # shifted out


def test_shift2_keeps_a_centred_digit_and_is_seeded():
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 10:18, 10:18] = torch.rand(64, 1, 8, 8)
    augment = parse_augmentation("shift2")
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))
    assert not torch.equal(a, images)


def test_rotation_by_90_degrees_is_counter_clockwise():
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 3] = 1.0  # top right
    out = rotate(image, torch.tensor([90.0]))
    assert out[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-5)  # top left
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["none", "shift2", "shift4", "rotate30", "affine"])
def test_known_augmentations_keep_shape(name):
    augment = parse_augmentation(name)
    images = torch.rand(5, 1, 28, 28)
    out = images if augment is None else augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape


@pytest.mark.parametrize("name", ["shift", "shift0", "flip", "rotate-5"])
def test_unknown_augmentation_is_an_error(name):
    with pytest.raises(ValueError, match="valid forms"):
        parse_augmentation(name)


def test_closed_form_inverse_matches_linalg_inv():
    generator = torch.Generator().manual_seed(0)

    def draw(low, high):
        return low + (high - low) * torch.rand(256, generator=generator, dtype=torch.float64)

    params = AffineParams(draw(-180, 180), draw(-0.5, 0.5), draw(0.5, 2.0), draw(0.5, 2.0), draw(-9, 9), draw(-9, 9))
    forward = affine_matrices(params, 28, 40)
    inverse = inverse_affine(forward)
    assert inverse.shape == (256, 2, 3)
    torch.testing.assert_close(inverse, torch.linalg.inv(forward)[:, :2, :], rtol=1e-12, atol=1e-12)
    # an inverse: composing gives the identity
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(256, 1, 3)
    identity = torch.eye(3, dtype=torch.float64).expand(256, 3, 3)
    torch.testing.assert_close(torch.cat([inverse, bottom], dim=1) @ forward, identity)
    # float32, as warp computes it
    torch.testing.assert_close(inverse_affine(forward.float()), torch.linalg.inv(forward.float())[:, :2, :],
                               rtol=1e-5, atol=1e-6)
