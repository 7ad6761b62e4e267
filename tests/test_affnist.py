"""The official affNIST loader on tiny .mat fixtures written with scipy.io.savemat."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from studies.data.affnist import (
    AffnistError,
    check_orientation,
    find_affnist,
    find_split,
    load_affnist,
    read_affnist_file,
)


def _digits(count: int, seed: int = 0) -> np.ndarray:
    """Asymmetric fake 28x28 digits, so a transposed or flipped reading cannot pass."""
    rng = np.random.default_rng(seed)
    digits = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        digits[i, 4:24, 8:14] = rng.integers(1, 256, (20, 6))
        digits[i, 4:8, 14:22] = 200 + i
    return digits


def _columns(images: np.ndarray) -> np.ndarray:
    """(N, 40, 40) -> (1600, N): each column the row-major flattening of one image."""
    return images.reshape(len(images), -1).T.copy()


def _centered(digits: np.ndarray) -> np.ndarray:
    return np.pad(digits, ((0, 0), (6, 6), (6, 6)))


def _save(path: Path, image: np.ndarray, labels: np.ndarray, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"affNISTdata": {"image": image, "label_int": labels, **extra}})


def test_single_file_layout_round_trips(tmp_path: Path) -> None:
    images = _centered(_digits(5))
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _save(tmp_path / "affNIST" / "test.mat", _columns(images), labels)
    assert find_affnist(tmp_path) == tmp_path / "affNIST"
    got_images, got_labels = load_affnist(tmp_path, "test")
    assert got_images.dtype == torch.uint8 and got_images.shape == (5, 40, 40)
    assert got_labels.dtype == torch.int64 and got_labels.tolist() == labels.tolist()
    assert np.array_equal(got_images.numpy(), images)


def test_batched_layout_in_numeric_order_at_the_root(tmp_path: Path) -> None:
    # Twelve batches so that lexical order (1, 10, 11, 12, 2, ...) would scramble them.
    images = _centered(_digits(12))
    for i in range(12):
        _save(tmp_path / "training_and_validation_batches" / f"{i + 1}.mat", _columns(images[i : i + 1]), np.array([i % 10]))
    assert find_affnist(tmp_path, "training_and_validation") == tmp_path
    assert find_affnist(tmp_path, "test") is None
    got_images, got_labels = load_affnist(tmp_path, "training_and_validation")
    assert got_labels.tolist() == [i % 10 for i in range(12)]
    assert np.array_equal(got_images.numpy(), images)


def _archive(path: Path, members: dict[str, Path]) -> None:
    """A zip as the affNIST page distributes them: .mat files, compressed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in members.items():
            archive.write(source, name)


def test_test_mat_zip_as_downloaded_is_read_without_extracting(tmp_path: Path) -> None:
    images = _centered(_digits(5))
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _save(tmp_path / "made" / "test.mat", _columns(images), labels)
    _archive(tmp_path / "data" / "affNIST" / "test.mat.zip", {"test.mat": tmp_path / "made" / "test.mat"})
    found = find_split(tmp_path / "data")
    assert found.found == "test.mat.zip" and find_affnist(tmp_path / "data") == tmp_path / "data" / "affNIST"
    got_images, got_labels = load_affnist(tmp_path / "data")
    assert np.array_equal(got_images.numpy(), images) and got_labels.tolist() == labels.tolist()
    assert sorted(p.name for p in (tmp_path / "data" / "affNIST").iterdir()) == ["test.mat.zip"]  # nothing extracted


@pytest.mark.parametrize("folder", ["affnist", "AFFNIST"])
def test_batches_zip_in_numeric_order_in_any_case_of_the_folder(tmp_path: Path, folder: str) -> None:
    images = _centered(_digits(12))
    members = {}
    for i in range(12):  # lexical order (1, 10, 11, 12, 2, ...) would scramble them
        _save(tmp_path / "made" / f"{i + 1}.mat", _columns(images[i : i + 1]), np.array([i % 10]))
        members[f"test_batches/{i + 1}.mat"] = tmp_path / "made" / f"{i + 1}.mat"
    _archive(tmp_path / "data" / folder / "test_batches.zip", members)
    assert find_split(tmp_path / "data").found == "test_batches.zip (12 files)"
    got_images, got_labels = load_affnist(tmp_path / "data")
    assert got_labels.tolist() == [i % 10 for i in range(12)] and np.array_equal(got_images.numpy(), images)


def test_extracted_files_in_a_lowercase_folder_are_found(tmp_path: Path) -> None:
    _save(tmp_path / "affnist" / "test.mat", _columns(_centered(_digits(2))), np.array([1, 2]))
    assert find_affnist(tmp_path) == tmp_path / "affnist"


def test_an_affnist_folder_without_a_test_set_says_what_it_holds_and_expects(tmp_path: Path) -> None:
    folder = tmp_path / "affNIST"
    folder.mkdir()
    (folder / "training.mat.zip").write_bytes(b"PK")
    (folder / "readme.txt").write_text("downloaded later")
    with pytest.raises(AffnistError) as info:
        find_affnist(tmp_path)
    text = str(info.value)
    assert "\n" not in text and str(folder) in text and "readme.txt, training.mat.zip" in text
    assert "expected test.mat.zip or test_batches.zip" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a zip archive at all", "not a readable zip archive"),
     ({"notes.txt": "x"}, "holds notes.txt but no test.mat")],
)
def test_a_damaged_or_wrong_archive_is_one_line(tmp_path: Path, content, message: str) -> None:
    archive = tmp_path / "affNIST" / "test.mat.zip"
    archive.parent.mkdir()
    if isinstance(content, bytes):
        archive.write_bytes(content)
    else:
        with zipfile.ZipFile(archive, "w") as opened:
            for name, text in content.items():
                opened.writestr(name, text)
    with pytest.raises(AffnistError, match=message) as info:
        load_affnist(tmp_path)
    assert "\n" not in str(info.value) and str(archive) in str(info.value)


@pytest.mark.parametrize("shape", [(4,), (1, 4), (4, 1)])
def test_label_shapes_and_float_values_are_accepted(tmp_path: Path, shape: tuple[int, ...]) -> None:
    labels = np.array([0, 9, 2, 7], np.float64).reshape(shape)  # MATLAB often writes doubles
    image = _columns(_centered(_digits(4))).astype(np.float64)
    _save(tmp_path / "test.mat", image, labels)
    got_images, got_labels = read_affnist_file(tmp_path / "test.mat")
    assert got_labels.tolist() == [0, 9, 2, 7] and got_images.dtype == torch.uint8


def test_missing_files_are_reported(tmp_path: Path) -> None:
    assert find_affnist(tmp_path) is None
    with pytest.raises(AffnistError, match="no official affNIST test files"):
        load_affnist(tmp_path)
    with pytest.raises(AffnistError, match="unknown affNIST split"):
        find_affnist(tmp_path, "train")


def _broken(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "test.mat"
    image, labels = _columns(_centered(_digits(3))), np.array([1, 2, 3])
    if kind == "not_mat":
        path.write_bytes(b"this is not a MATLAB file at all\n" * 10)
    elif kind == "no_struct":
        scipy.io.savemat(path, {"something": image})
    elif kind == "no_image":
        scipy.io.savemat(path, {"affNISTdata": {"label_int": labels}})
    elif kind == "no_labels":
        scipy.io.savemat(path, {"affNISTdata": {"image": image}})
    elif kind == "rows":
        _save(path, image[:-1], labels)
    elif kind == "label_range":
        _save(path, image, np.array([1, 2, 10]))
    elif kind == "label_count":
        _save(path, image, np.array([1, 2]))
    elif kind == "pixel_range":
        _save(path, image.astype(np.float64) / 255.0, labels)  # normalised floats, not 0..255 integers
    elif kind == "not_struct":
        scipy.io.savemat(path, {"affNISTdata": image})
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not_mat", "not a readable .mat file"),
        ("no_struct", "no variable 'affNISTdata'"),
        ("not_struct", "affNISTdata is not a 1x1 struct"),
        ("no_image", "affNISTdata has no field 'image'"),
        ("no_labels", "affNISTdata has no field 'label_int'"),
        ("rows", r"affNISTdata\.image has shape \(1599, 3\), expected \(1600, N\)"),
        ("label_range", r"affNISTdata\.label_int has values in 1\.\.10, expected 0\.\.9"),
        ("label_count", r"affNISTdata\.label_int has shape \(1, 2\), expected 3 labels"),
        ("pixel_range", r"affNISTdata\.image has non-integer values"),
    ],
)
def test_broken_files_raise_a_one_line_error_naming_file_and_field(tmp_path: Path, kind: str, message: str) -> None:
    path = _broken(tmp_path, kind)
    with pytest.raises(AffnistError, match=message) as info:
        load_affnist(tmp_path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert isinstance(info.value, ValueError)


def test_badly_named_batch_file_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path / "test_batches" / "1.mat", _columns(_centered(_digits(1))), np.array([1]))
    _save(tmp_path / "test_batches" / "extra.mat", _columns(_centered(_digits(1))), np.array([1]))
    with pytest.raises(AffnistError, match="<number>.mat"):
        load_affnist(tmp_path)


def _orientation_fixture(tmp_path: Path, originals: np.ndarray, transpose: bool) -> torch.Tensor:
    centered = _centered(originals)
    if transpose:  # what a column-major (MATLAB reshape) writer would produce
        centered = centered.transpose(0, 2, 1)
    _save(tmp_path / "just_centered" / "test.mat", _columns(centered), np.zeros(len(originals), np.uint8))
    images, _ = load_affnist(tmp_path / "just_centered", "test")
    return images


def test_orientation_check_accepts_row_major_and_rejects_transposed(tmp_path: Path) -> None:
    originals = _digits(4)
    assert check_orientation(_orientation_fixture(tmp_path / "a", originals, transpose=False), originals)
    assert not check_orientation(_orientation_fixture(tmp_path / "b", originals, transpose=True), originals)


@pytest.mark.data
def test_orientation_check_on_real_mnist_digits(tmp_path: Path) -> None:
    from studies.data import datasets

    try:
        originals, _ = datasets.load("mnist", "test")
    except Exception as exc:  # the fake-digit test above still covers the logic
        pytest.skip(f"MNIST not prepared: {exc}")
    originals = originals[:8].numpy()
    assert check_orientation(_orientation_fixture(tmp_path / "a", originals, transpose=False), originals)
    assert not check_orientation(_orientation_fixture(tmp_path / "b", originals, transpose=True), originals)


def test_orientation_check_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="expected \\(N, 40, 40\\)"):
        check_orientation(torch.zeros(2, 28, 28), torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="originals have shape"):
        check_orientation(torch.zeros(2, 40, 40), torch.zeros(3, 28, 28))
