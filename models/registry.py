"""Model registry in the style of timm: `create(name, **options)` and `names()`.

Every model is built from a frozen config dataclass, so the options a model accepts are
exactly the dataclass fields; anything else is rejected with the list of valid options.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from models.fields import ConfigError

_BUILDERS: dict[str, tuple[type, Callable[..., nn.Module]]] = {}


def register(name: str, config_cls: type):
    """Register `builder(config) -> nn.Module` under `name`, configured by `config_cls`."""

    def decorator(builder: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = (config_cls, builder)
        return builder

    return decorator


def names() -> list[str]:
    return sorted(_BUILDERS)


def config_class(name: str) -> type:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    return _BUILDERS[name][0]


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class(name))]


def make_config(name: str, **options):
    config_cls = config_class(name)
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
            f"valid options: {', '.join(option_names(name))}"
        )
    return config_cls(**options)


def create(name: str, **options) -> nn.Module:
    """Build model `name`; options override the paper defaults of its config dataclass."""
    config = make_config(name, **options)
    return _BUILDERS[name][1](config)
