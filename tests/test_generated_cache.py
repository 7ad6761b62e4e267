"""The one cache of the generated data sets (studies/data/generated_cache.py), the same for each
set: an intact file is read without generating; a damaged one is reported in one warning line
naming it, then rebuilt and replaced whole; a disk that cannot take the file is a one-line
warning and the set is still returned."""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import pytest
import torch

from studies.data import affnist_style, generated_cache, multimnist


def _digits(count: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Small 28x28 blobs inside MNIST's 20x20 box, of every class, so both recipes accept them."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, 4:24, 4:24] = torch.randint(0, 256, (count, 20, 20), generator=generator, dtype=torch.uint8)
    return images, torch.arange(count) % 10


# Each generated set, made through its module's own load_or_generate.
SETS = {
    "affnist_style": (affnist_style, lambda images, labels, where: affnist_style.load_or_generate(
        images, labels, copies=2, seed=4, cache_dir=where)),
    "multimnist": (multimnist, lambda images, labels, where: multimnist.load_or_generate(
        images, labels, 2, seed=4, cache_dir=where)),
}


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif how == "garbage":
        path.write_bytes(os.urandom(2000))
    elif how == "foreign":  # readable, but not this set
        torch.save({"images": torch.zeros(3), "metadata": {"seed": 4}}, path)
    else:  # the right metadata over contents that do not fit it
        payload = torch.load(path, weights_only=True)
        payload["images"] = payload["images"][:-1]
        torch.save(payload, path)


@pytest.mark.parametrize("name", sorted(SETS))
def test_an_intact_cache_is_loaded_without_generating(tmp_path: Path, monkeypatch, name: str, count_calls) -> None:
    module, make = SETS[name]
    images, labels = _digits()
    calls = count_calls(module, "generate")
    first = make(images, labels, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    before = path.stat()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good file is read without complaint
        again = make(images, labels, tmp_path)
    assert len(calls) == 1
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert torch.equal(again.images, first.images) and again.metadata() == first.metadata()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "wrong contents"])
@pytest.mark.parametrize("name", sorted(SETS))
def test_a_damaged_cache_is_reported_in_one_line_and_rebuilt(tmp_path: Path, monkeypatch, name, damage, count_calls) -> None:
    module, make = SETS[name]
    images, labels = _digits()
    original = make(images, labels, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    _damage(path, damage)
    damaged_inode = path.stat().st_ino
    calls = count_calls(module, "generate")
    with pytest.warns(UserWarning) as caught:
        rebuilt = make(images, labels, tmp_path)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and str(path) in message and "unusable" in message and "regenerating" in message
    assert len(calls) == 1 and torch.equal(rebuilt.images, original.images)
    # Replaced whole by a rename (a new file under the same name), no temporary file left beside it.
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.stat().st_ino != damaged_inode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(make(images, labels, tmp_path).images, original.images)
    assert len(calls) == 1


@pytest.mark.parametrize("name", sorted(SETS))
def test_a_full_disk_is_one_warning_and_the_set_is_still_made(tmp_path: Path, monkeypatch, name: str) -> None:
    _, make = SETS[name]
    images, labels = _digits()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.warns(UserWarning) as caught:
        made = make(images, labels, tmp_path)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and message.startswith(f"cannot write {tmp_path}") and "No space left" in message
    assert made.images.shape[0] == 40 and list(tmp_path.iterdir()) == []


def test_the_layout_is_the_callers_directory_else_the_root_else_the_default(tmp_path: Path) -> None:
    assert generated_cache.cache_directory("sets", tmp_path / "here", tmp_path) == tmp_path / "here"
    assert generated_cache.cache_directory("sets", None, tmp_path) == tmp_path / "sets"
    assert affnist_style.default_cache_dir().name == "affnist_style"
    assert multimnist.default_cache_dir().name == "multimnist"


def test_the_file_names_of_recipes_never_change() -> None:
    # Stored study trials are keyed by these names: the values are the ones the sets have always had.
    sha = "ab" * 32
    assert affnist_style.cache_key(affnist_style.AffineRanges(), 0, 1, 40, sha, 10000) == "a909bc6722720fc1312a"
    assert multimnist.cache_key(3, 7, sha, 60000) == "613145419a4758fc32ad"
    assert generated_cache.recipe_key({"seed": 0, "copies": 1}) == generated_cache.recipe_key({"copies": 1, "seed": 0})
