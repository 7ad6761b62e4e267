"""Wrong values generated from a field's annotation: its type, finiteness and range, for the tests
that feed every field of the specs and every command-line option something it must refuse."""
from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import AfterValidator, BaseModel

UNION_TYPES = (typing.Union, getattr(__import__("types"), "UnionType", typing.Union))


def _split(annotation) -> tuple[Any, list]:
    """(base type, metadata) of a possibly Annotated annotation."""
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        inner_base, inner_meta = _split(base)
        return inner_base, inner_meta + metadata
    return annotation, []


def _members(annotation) -> list:
    base, metadata = _split(annotation)
    if typing.get_origin(base) in UNION_TYPES:
        return [member for arg in typing.get_args(base) for member in _members(arg)]
    return [(base, metadata)]


def _below(bound, integer: bool):
    return bound - 1 if integer else bound - max(1e-3, abs(bound) * 1e-3)


def _above(bound, integer: bool):
    return bound + 1 if integer else bound + max(1e-3, abs(bound) * 1e-3)


def _range_violations(metadata: list, integer: bool) -> list:
    out = []
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            bound = getattr(item, name, None)
            if bound is None or (isinstance(bound, float) and math.isinf(bound)):
                continue
            out.append({"ge": _below, "gt": lambda b, i: b, "le": _above, "lt": lambda b, i: b}[name](bound, integer))
    return out


def bad_values(annotation) -> list:
    """Values every member of the annotation refuses; None never (it is often allowed)."""
    members = _members(annotation)
    candidates: list = []
    for base, metadata in members:
        origin = typing.get_origin(base)
        if base is bool:
            candidates += ["yes", 1]
        elif base is int:
            candidates += ["three", 1.5, True] + _range_violations(metadata, integer=True)
        elif base is float:
            candidates += ["x", float("nan"), float("inf"), True] + _range_violations(metadata, integer=False)
        elif origin is Literal:
            candidates += ["no-such-value", 3.5]
        elif base is str:
            candidates += [3]
            if any(isinstance(item, AfterValidator) for item in metadata):
                candidates += ["no-such-value"]
            if any(getattr(item, "pattern", None) for item in metadata):
                candidates += ["not an identifier!"]
        elif origin in (tuple, list):
            (item,) = typing.get_args(base)[:1]
            candidates += ["x", *([bad] for bad in bad_values(item)[:2])]
            if any(isinstance(m, at.MinLen) and m.min_length > 0 for m in metadata):
                candidates.append([])
        elif origin is dict or (isinstance(base, type) and issubclass(base, BaseModel)):
            candidates += ["x", 3]
    # a value one member accepts is not bad for the union (e.g. 0 for `0 | >= 28`)
    return [value for value in candidates if not _accepted_by_some(value, members)]


def _accepted_by_some(value, members) -> bool:
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    for base, metadata in members:
        if isinstance(base, type) and issubclass(base, BaseModel):
            if isinstance(value, dict):
                return True
            continue
        annotation = Annotated[(base, *metadata)] if metadata else base
        try:
            TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False)).validate_python(
                tuple(value) if isinstance(value, list) else value)
            return True
        except (ValidationError, TypeError, ValueError):
            continue
    return False


def field_annotation(model, name: str):
    """A pydantic model field's annotation with its constraints, as one Annotated type."""
    info = model.model_fields[name]
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def dataclass_annotation(cls, name: str):
    return typing.get_type_hints(cls, include_extras=True)[name]
