import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from studies.data.idx import IdxError, idx_shape, read_idx, write_idx


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)


def test_round_trip_images(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "images"
    write_idx(path, images)
    back = read_idx(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, images)
    assert idx_shape(path) == images.shape


def test_round_trip_labels(tmp_path: Path, labels: np.ndarray) -> None:
    path = tmp_path / "labels"
    write_idx(path, labels)
    np.testing.assert_array_equal(read_idx(path), labels)


def test_header_is_big_endian_with_standard_magic(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(tmp_path / "i", images)
    write_idx(tmp_path / "l", labels)
    assert (tmp_path / "i").read_bytes()[:16] == bytes.fromhex("00000803 00000005 00000004 00000003")
    assert (tmp_path / "l").read_bytes()[:8] == bytes.fromhex("00000801 00000006")


def test_reads_gzip(tmp_path: Path, images: np.ndarray) -> None:
    plain = tmp_path / "images"
    write_idx(plain, images)
    packed = tmp_path / "images.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_idx(packed), images)


@pytest.mark.parametrize(
    "header, fragment",
    [
        (bytes.fromhex("00000802"), "ndim 2"),
        (bytes.fromhex("00000903"), "0x09"),
        (bytes.fromhex("01000803"), "magic"),
        (bytes.fromhex("00000804"), "ndim 4"),
    ],
)
def test_wrong_magic_is_rejected(tmp_path: Path, header: bytes, fragment: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(header + bytes(32))
    with pytest.raises(IdxError, match=fragment) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_data_is_rejected(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "images"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IdxError, match="truncated"):
        read_idx(path)
    with pytest.raises(IdxError, match="truncated"):
        idx_shape(path)


def test_truncated_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(bytes.fromhex("00000803 00000005"))
    with pytest.raises(IdxError, match="header"):
        read_idx(path)


def test_extra_bytes_are_rejected(tmp_path: Path, labels: np.ndarray) -> None:
    path = tmp_path / "labels"
    write_idx(path, labels)
    with path.open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(IdxError, match="1 bytes beyond"):
        read_idx(path)
    with pytest.raises(IdxError, match="beyond"):
        idx_shape(path)


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_unreadable_gzip_is_rejected(tmp_path: Path, labels: np.ndarray, damage: str) -> None:
    plain = tmp_path / "labels"
    write_idx(plain, labels)
    packed = gzip.compress(plain.read_bytes())
    path = tmp_path / "labels.gz"
    path.write_bytes(b"not gzip at all" if damage == "garbage" else packed[: len(packed) // 2])
    with pytest.raises(IdxError, match="gzip"):
        read_idx(path)


def test_missing_file_is_idx_error(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match="no such file"):
        read_idx(tmp_path / "absent")


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.uint8), np.zeros((1, 1, 1, 1), dtype=np.uint8)],
)
def test_write_rejects_unsupported_arrays(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", array)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "labels"
    write_idx(path, labels)
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_idx(path, labels[:2])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels"]


def test_written_file_follows_umask_not_private_temp_mode(tmp_path: Path, labels: np.ndarray) -> None:
    umask = os.umask(0o022)
    try:
        write_idx(tmp_path / "labels", labels)
    finally:
        os.umask(umask)
    assert (tmp_path / "labels").stat().st_mode & 0o777 == 0o644
