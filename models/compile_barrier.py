"""What torch.compile must be told about the models: hand-scheduled autograd Functions it should run
eagerly (a graph break), and checks it should take as constants. Both are applied lazily: importing
torch._dynamo at import time adds about 2 s to the start of every process, most of which never
compile (the CLI's error paths, reports, the bench's parsing, every test's subprocess)."""
from __future__ import annotations

import functools
import sys

import torch


def eager_under_compile(fn):
    """`torch.compiler.disable(fn)`, applied once torch._dynamo is loaded."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            if torch.compiler.is_compiling() or "torch._dynamo" in sys.modules:
                disabled = torch.compiler.disable(fn)
            else:
                return fn(*args, **kwargs)
        return disabled(*args, **kwargs)

    return call


_CONSTANTS: list = []


def constant_under_compile(fn):
    """Register `fn`, a check the tracer should ask once instead of tracing, for
    `torch.compiler.assume_constant_result`, applied by `mark_constants` (`compile_model` calls it).
    The mark is on the function itself (assume_constant_result returns it), so the module globals
    that name it see it."""
    _CONSTANTS.append(fn)
    return fn


def mark_constants() -> None:
    """Mark the checks registered with `constant_under_compile` for the tracer (idempotent)."""
    for constant in _CONSTANTS:
        if torch.compiler.assume_constant_result(constant) is not constant:
            raise RuntimeError("torch.compiler.assume_constant_result no longer marks the function itself")


def compile_model(fn, **options):
    """`torch.compile(fn, **options)`, after `mark_constants`."""
    mark_constants()
    return torch.compile(fn, **options)
