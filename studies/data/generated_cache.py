"""The one cache of every generated data set (affNIST-style, MultiMNIST, any later one).

It owns, the same for every set:
  - the layout: a set's file is <directory>/<key>.pt, the directory being the one a caller names,
    else <root>/<folder> for a given data root, else <default data root>/<folder>;
  - the identity: `source_fingerprint` of the source digits, and `recipe_key`, the file's name,
    hashed from the identity dict a recipe gives (so stored trials keyed by it stay valid);
  - reading: a file is used only if torch.load(weights_only=True) reads it, its metadata is what
    the recipe expects, and the set's own `decode` accepts its contents;
  - load-or-generate: no file, generate; a file present but unusable (torn, foreign, tampered,
    unreadable) is reported in one warning line naming it and why, then generated again;
  - writing: whole or not at all, through save_atomically, so a reader never sees half a file and
    a good file is never written over; a disk that cannot take the file is a one-line warning.

A data set's module keeps only its recipe: it describes it as a `Recipe` (identity, expected
metadata, how to generate, how to turn the set into a payload and back) and calls
`load_or_generate`.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from studies.data.atomic_save import save_atomically
from studies.data.datasets import default_data_root, one_line
from studies.write_faults import WriteFailed


class GeneratedSet(Protocol):
    """What the cache asks of a generated set: the JSON-able record saved beside its tensors."""

    def metadata(self) -> dict[str, object]: ...


SetT = TypeVar("SetT", bound=GeneratedSet)


@dataclass(frozen=True)
class Recipe(Generic[SetT]):
    """What the cache needs to know of one requested set.

    `identity` names the file; `metadata` is what a file's metadata must equal, except the
    `measured` keys, which only generating can know (they are taken from the file and left to
    `decode` to check). `encode` gives the payload's tensors (plain tensors, strings and numbers,
    so a weights-only load reads them); the cache adds the set's metadata. `decode(payload,
    metadata)` rebuilds the set and raises (ValueError) on anything inconsistent.
    """

    name: str  # the set's description, in warnings
    folder: str  # its cache folder under a data root
    identity: Mapping[str, object]
    metadata: Mapping[str, object]
    generate: Callable[[], SetT]
    encode: Callable[[SetT], dict[str, object]]
    decode: Callable[[dict[str, object], dict[str, object]], SetT]
    measured: tuple[str, ...] = ()


def source_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the source pixels and labels, so a different source never hits the cache."""
    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def recipe_key(identity: Mapping[str, object]) -> str:
    """The cache file's name for a recipe: the start of the sha256 of its identity as sorted JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def cache_directory(
    folder: str, cache_dir: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None
) -> Path:
    """Where a set's files live: `cache_dir` if given, else <root>/<folder>, else under the default data root."""
    if cache_dir is not None:
        return Path(cache_dir)
    return (Path(root) if root is not None else default_data_root()) / folder


def cache_path(recipe: Recipe, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_directory(recipe.folder, cache_dir) / f"{recipe_key(recipe.identity)}.pt"


def _read(path: Path, recipe: Recipe[SetT]) -> SetT:
    """The set in `path`; an exception saying what is wrong otherwise."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("not a generated-set cache file")
    missing = [key for key in recipe.measured if key not in metadata]
    if missing:
        raise ValueError(f"its metadata lacks {', '.join(missing)}")
    if metadata != {**recipe.metadata, **{key: metadata[key] for key in recipe.measured}}:
        raise ValueError("its metadata does not match the requested set")
    return recipe.decode(payload, metadata)


def load_or_generate(recipe: Recipe[SetT], cache_dir: str | os.PathLike[str] | None = None) -> SetT:
    """The set of `recipe`: read from its cache file when that is intact, else generated and saved."""
    path = cache_path(recipe, cache_dir)
    if path.is_file():
        try:
            return _read(path, recipe)
        except Exception as problem:  # torn, foreign, tampered or unreadable: rebuilt, never trusted
            # Not silent: a damaged cache means something else wrote or broke it; say so, then replace.
            why = one_line(problem, limit=200)
            warnings.warn(f"{recipe.name} cache {path} is unusable ({why}); regenerating it",
                          stacklevel=3)
    result = recipe.generate()
    try:
        save_atomically({**recipe.encode(result), "metadata": result.metadata()}, path)
    except WriteFailed as error:
        # The cache only spares generating the set again: a disk that cannot take it is not a fault.
        warnings.warn(f"{error}; the set is used without a cache and generated again next time", stacklevel=3)
    return result


__all__ = ["Recipe", "cache_directory", "cache_path", "load_or_generate", "recipe_key", "source_fingerprint"]
