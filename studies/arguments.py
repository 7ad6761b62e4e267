"""Command-line options declared once: each names the dataclass field whose annotation judges its
value (models/fields.py), so a value typed on the command line is checked exactly like the same
value in a spec file or in Python, and a mistake is one line with exit code 2."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from models.fields import ConfigError, check_value, from_text

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    # The dataclass and field whose annotation judges the value (None: free text, judged later).
    owner: type | None = None
    attribute: str | None = None
    # Passed to argparse as they are (action, default, choices, dest, ...).
    argparse_kwargs: dict[str, Any] = field(default_factory=dict)
    # A comma-separated list of values for a tuple field.
    listed: bool = False

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs = dict(self.argparse_kwargs)
        if self.owner is not None:
            kwargs["type"] = (typed_list if self.listed else typed)(self.owner, self.attribute)
        parser.add_argument(self.flag, help=self.help, **kwargs)


def port_number(text: str) -> int:
    """An argparse type: a TCP port a user may open (1 to 65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 1 and 65535, got {port}")
    return port


def typed(owner: type, name: str):
    """An argparse type that judges a value by `owner.name`'s annotation."""

    def parse(text: str):
        try:
            return from_text(owner, name, text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def typed_list(owner: type, name: str):
    """Like `typed`, for a comma-separated list held by a tuple field."""

    def parse(text: str):
        items = [item.strip() for item in text.split(",") if item.strip()]
        values = []
        for item in items:
            try:
                values.append(int(item))
            except ValueError:
                values.append(item)
        try:
            return check_value(owner, name, tuple(values))
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit code 2), like every other."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")
