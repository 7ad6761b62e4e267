"""Hand-scheduled autograd Functions that torch.compile should run eagerly (a graph break)."""
from __future__ import annotations

import functools
import sys

import torch


def eager_under_compile(fn):
    """`torch.compiler.disable(fn)`, applied once torch._dynamo is loaded.

    Decorating at import time would import torch._dynamo, which adds about 2 s to the start of
    processes that never compile or train (the CLI's error paths, reports, the bench's parsing).
    """
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
