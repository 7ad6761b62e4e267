"""The project's small C++ kernels for the CPU (models/cpu/csrc), built once and loaded on demand.

They are the routing sweeps (`models.routing_sweeps`), whose PyTorch fallback computes the same
function (tested); whether they run on a CPU is the speed plan's choice (models/speed_paths.py),
and paths that never paid were removed (bench/README.md). They are built with
torch.utils.cpp_extension (g++ and ninja, about 40 s; `make setup` does it via
`python -m models.cpu.build`) into torch's extension cache, under
a name hashed from the sources, the flags, the torch version and this checkout's path, so an
edited header or a new torch is never served a stale build and two checkouts do not rebuild
each other's. Where they cannot be built the PyTorch fallbacks run, after one warning saying
why; CAPSBENCH_CPU_KERNELS=0 chooses the fallbacks without building anything.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

SOURCES = Path(__file__).parent / "csrc"
ENV_SWITCH = "CAPSBENCH_CPU_KERNELS"

_module = None
_error: str | None = None
_tried = False
_lock = threading.Lock()  # a second thread waits for the build instead of finding no module


def compile_flags() -> list[str]:
    # Vector width as PyTorch itself dispatches on this CPU; it is part of the build's name, so
    # a cache shared by different machines never hands one a kernel it cannot run.
    # -fno-trapping-math lets GCC vectorise loops with float comparisons (max, clamps); traps
    # are off in PyTorch's floating-point environment anyway.
    flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _build_name(flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join([*flags, torch.__version__, str(SOURCES.resolve())]).encode())
    for path in sorted(SOURCES.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + path.read_bytes())
    return f"capsbench_cpu_kernels_{digest.hexdigest()[:12]}"


def _build():
    # Its import logs "No CUDA runtime is found" on CPU-only machines: irrelevant to this build.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    # pip installs ninja next to the interpreter; cpp_extension looks for it on PATH.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    flags = compile_flags()
    return cpp_extension.load(
        name=_build_name(flags),
        sources=[str(SOURCES / "cpu_kernels.cpp")],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
    )


def _one_line(error: Exception) -> str:
    """The compiler's first error line if there is one (the exception's last line is ninja's)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first_error = next((line for line in lines if "error:" in line), None)
    return f"{type(error).__name__}: {first_error or (lines[-1] if lines else '')}"


def module():
    """The compiled kernels, or None (then `error()` says why)."""
    global _module, _error, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if os.environ.get(ENV_SWITCH, "1") == "0":
            _error = f"{ENV_SWITCH}=0"
        else:
            try:
                _module = _build()
            except Exception as failure:  # any build failure: no compiler, no headers, no ninja
                _error = _one_line(failure)
                warnings.warn(
                    f"capsbench: the C++ CPU kernels could not be built ({_error}); routing and the DFT "
                    f"convolution run on PyTorch ops, slower on the CPU",
                    stacklevel=2,
                )
        _tried = True
    return _module


def error() -> str | None:
    return _error


def version(device: torch.device | str = "cpu") -> str:
    """What float32 work on `device` runs on: "cpp" (these kernels) or "torch" (PyTorch ops)."""
    return "cpp" if usable(torch.empty(0, device=device)) else "torch"


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: float32 on the CPU, outside torch.compile tracing."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.compiler.is_compiling()
        and module() is not None
    )
