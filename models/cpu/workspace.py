"""Large buffers kept from one training step to the next, reused only when provably free.

On the CPU, glibc serves every allocation over 32 MB with freshly mapped pages, and touching
them costs page faults: about 80 ms per 100 MB on the project's 2-core machine, a sizeable share
of a CapsNet step. The buffers that size (the routing votes, the DFT convolution's weight
spectra) are therefore kept and handed out again, but only when nothing else holds their
storage: no autograd graph that saved them for a backward still pending, no view of them alive.
Otherwise, and wherever the private use-count query is missing, a new buffer is allocated, so
reuse can never change a result.
"""
from __future__ import annotations

import torch


def _storage_users(tensor: torch.Tensor) -> int | None:
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return None
    return use_count(tensor.untyped_storage()._cdata)


# What the count reads for a storage held by exactly one tensor.
_FREE_USERS = _storage_users(torch.empty(1))


class Workspace:
    """Named buffers. `get` returns a new view each time: whatever keeps that view (an autograd
    graph that saved it) raises the storage's use count and so blocks the buffer's reuse."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        cached = self.buffers.pop(name, None)
        if (
            cached is not None
            and cached.shape == shape
            and cached.dtype == like.dtype
            and cached.device == like.device
            # a buffer made under inference_mode cannot be written outside it (and vice versa
            # it would be needlessly tracked)
            and cached.is_inference() == torch.is_inference_mode_enabled()
            and not torch.compiler.is_compiling()
            and _FREE_USERS is not None
            and _storage_users(cached) == _FREE_USERS
        ):
            fresh = cached
        else:
            del cached
            fresh = like.new_empty(shape)
        if not torch.compiler.is_compiling():
            self.buffers[name] = fresh
        return fresh.view(shape)

    # Copies and pickles of a model start with an empty workspace.
    def __deepcopy__(self, memo):
        return Workspace()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.buffers = {}
