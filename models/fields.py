"""Declarative checks of configuration dataclasses: each field's type and range live in its
annotation (e.g. `Annotated[int, Ge(1)]`, `Literal["paper", "official"]`), and one function checks
every field against it with pydantic in strict mode (no "3" for 3, no True for 1, finite floats).
Model configs, the training config and the study specs all go through it, so a value is judged the
same way wherever it comes from.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A configuration value (an option, a spec value, a command-line value) that is not allowed;
    the message names it. Entry points print it in one line; a plain ValueError is a bug."""


@functools.cache
def _adapter(cls: type, name: str) -> TypeAdapter:
    return TypeAdapter(typing.get_type_hints(cls, include_extras=True)[name], config=STRICT)


def _tuples(value: Any) -> Any:
    """TOML and JSON give lists where the configs hold tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_value(cls: type, name: str, value: Any) -> Any:
    """`value` as field `name` of dataclass `cls` holds it; ConfigError naming the field otherwise."""
    try:
        return _adapter(cls, name).validate_python(_tuples(value))
    except ValidationError as error:
        # A union (e.g. 0 or >= 28) fails on every member: say each; list positions are kept.
        problems = error.errors()
        where = "".join(f"[{part}]" for part in problems[0]["loc"] if isinstance(part, int))
        said = " or ".join(dict.fromkeys(_sentence(problem["msg"]) for problem in problems))
        raise ConfigError(f"{name}{where}: {said}, got {value!r}") from None


def _sentence(message: str) -> str:
    return message[:1].lower() + message[1:]


def check_fields(instance: Any) -> None:
    """Every field of a dataclass instance against its annotation (call from __post_init__)."""
    for name in field_names(type(instance)):
        check_value(type(instance), name, getattr(instance, name))


def from_text(cls: type, name: str, text: str) -> Any:
    """A command-line string as field `name` of `cls` holds it: tried as text, then as an integer,
    then as a number (so "3" is 3 for an int field and "nan" is refused for a float one)."""
    candidates: list[Any] = [text]
    for convert in (int, float):  # the first number form that parses: "0" is 0, never 0.0
        try:
            candidates.append(convert(text))
            break
        except ValueError:
            pass
    error = None
    for candidate in candidates:
        try:
            return check_value(cls, name, candidate)
        except ConfigError as problem:
            error = problem
    raise error
