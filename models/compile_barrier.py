"""Hand-scheduled autograd Functions that torch.compile should run eagerly (a graph break)."""
from __future__ import annotations

import functools

import torch


def eager_under_compile(fn):
    """`torch.compiler.disable(fn)`, applied only when something compiles.

    Decorating at import time would import torch._dynamo, which adds about 2 s to the start of
    every process (every CLI call and test subprocess), compiled or not.
    """
    disabled = None

    @functools.wraps(fn)
    def call(*args):
        nonlocal disabled
        if not torch.compiler.is_compiling():
            return fn(*args)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args)

    return call
