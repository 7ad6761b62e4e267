"""glibc's malloc thresholds, pinned so that a step's speed does not depend on the past.

glibc serves an allocation above its mmap threshold with fresh pages from the kernel and hands
them back when the tensor is freed, so the next step pays the page faults again. The threshold
starts at 128 kB and moves with the history of the process (it rises each time such a block is
freed), so the same CapsNet training step ran at different speeds depending on what the
process had run before: measured here, batch 64 after batch 32 at 95-113 images/s, alone at
133; with the thresholds pinned, 135-139 either way. Pinning the threshold at its 32 MB
ceiling and letting the heap keep up to 1 GB of freed memory gives every step the same, warm
allocator. The few blocks above 32 MB are kept by the models themselves (`models.cpu.workspace`).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it
TRIM_THRESHOLD = 1 << 30

_pinned: bool | None = None


def pin_malloc_thresholds() -> bool:
    """Once per process; False where the C library is not glibc (nothing changes there)."""
    global _pinned
    if _pinned is None:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            _pinned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            _pinned = False
    return _pinned
