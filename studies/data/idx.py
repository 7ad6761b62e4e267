"""Reading and writing the IDX files that MNIST-style datasets ship as.

Only the subset these datasets use is supported: unsigned bytes (type 0x08),
1-D label files (magic 2049) and 3-D image files (magic 2051), big-endian.
Anything else is treated as a damaged file rather than guessed at, because a
silently misread dataset is worse than a loud failure.
"""

from __future__ import annotations

import gzip
import os
import secrets
import zlib
from pathlib import Path

import numpy as np

LABELS_MAGIC = 2049
IMAGES_MAGIC = 2051
_UBYTE_TYPE = 0x08
_MAGIC_FOR_NDIM = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}


class IdxError(ValueError):
    """An IDX file is missing, damaged, or not the kind this module handles."""


def _parse_header(head: bytes, path: Path) -> tuple[int, tuple[int, ...]]:
    """Return (header length, shape); `head` must hold at least the full header."""
    if len(head) < 4:
        raise IdxError(f"{path}: only {len(head)} bytes, too short for an IDX header")
    if head[0] != 0 or head[1] != 0:
        magic = int.from_bytes(head[:4], "big")
        raise IdxError(f"{path}: bad IDX magic {magic} (expected {LABELS_MAGIC} or {IMAGES_MAGIC})")
    if head[2] != _UBYTE_TYPE:
        raise IdxError(f"{path}: IDX element type 0x{head[2]:02x} is not 0x08 (uint8)")
    ndim = head[3]
    if ndim not in _MAGIC_FOR_NDIM:
        raise IdxError(f"{path}: IDX ndim {ndim} is neither 1 (labels) nor 3 (images)")
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise IdxError(f"{path}: truncated inside the IDX header ({len(head)} of {header_len} bytes)")
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return header_len, shape


def _check_length(path: Path, actual: int, header_len: int, shape: tuple[int, ...]) -> None:
    expected = header_len + int(np.prod(shape, dtype=np.int64))
    if actual < expected:
        raise IdxError(f"{path}: truncated, {actual} bytes but header {shape} needs {expected}")
    if actual > expected:
        raise IdxError(f"{path}: corrupt, {actual - expected} bytes beyond what header {shape} describes")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
        return path.read_bytes()
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    # A truncated gzip stream surfaces as EOFError, a damaged one as zlib.error.
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: unreadable gzip ({exc})") from exc


def idx_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Shape from the header of an uncompressed IDX file, after checking its length.

    Reads only the header, so it is cheap enough to run before every load.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    header_len, shape = _parse_header(head, path)
    _check_length(path, size, header_len, shape)
    return shape


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a plain or .gz IDX file into a uint8 array shaped as its header says."""
    path = Path(path)
    data = _read_bytes(path)
    header_len, shape = _parse_header(data[:16], path)
    _check_length(path, len(data), header_len, shape)
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 label (1-D) or image (3-D) array as an uncompressed IDX file.

    The bytes go to a temporary file in the same directory first and are then
    renamed over `path`, so readers never see a half-written file.
    """
    path = Path(path)
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: IDX arrays must be uint8, got {array.dtype}")
    if array.ndim not in _MAGIC_FOR_NDIM:
        raise ValueError(f"{path}: IDX arrays must be 1-D labels or 3-D images, got {array.ndim}-D")
    header = _MAGIC_FOR_NDIM[array.ndim].to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)

    tmp_name = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open rather than mkstemp: mkstemp's 0600 would make the data private to one user.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(np.ascontiguousarray(array).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
