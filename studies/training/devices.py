"""Device choice and mixed precision, shared by training, evaluation and the benchmark."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch

from models.fields import ConfigError

# CPU flags (Linux /proc/cpuinfo names) whose bf16 matrix instructions make CPU autocast pay:
# AMX tiles first (several times float32's matmul rate), then AVX512-BF16.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


@functools.cache
def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in Linux's /proc/cpuinfo; None where it is missing or unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where /proc/cpuinfo is unreadable."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13", ...), or the platform's words where Linux's are missing."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def machine_name(device: torch.device) -> str:
    """What a speed measured on `device` belongs to: the GPU's name, or the CPU's model."""
    return device_name(device) if device.type == "cuda" else cpu_model()


def cpu_bf16_isa() -> str | None:
    """The best bf16 matrix ISA of this CPU (`amx_bf16`, `avx512_bf16`), or None."""
    return next((flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()), None)


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_isa() is not None)


def check_bf16(device: torch.device) -> None:
    """Refuse bf16 autocast, in one line, where it would only emulate bf16 slowly."""
    if device.type == "cpu" and cpu_bf16_isa() is None:
        raise ConfigError(
            "bf16 needs a CPU with AMX or AVX512-BF16 (neither amx_bf16 nor avx512_bf16 is in "
            "/proc/cpuinfo here); run in float32 (without --bf16 / bf16 = false)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bf16 autocast is supported on cpu and cuda, not {device.type}")


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA, or on a CPU with bf16 matrix instructions, when asked; else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def compiles(device: torch.device, setting: str) -> bool:
    """Whether a training step compiles, for TrainConfig.compile ("auto": on CUDA only)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def set_algorithms(device: torch.device, deterministic: bool, tf32: bool = False) -> tuple:
    """Set the process-wide algorithm choices of `algorithm_settings`; return the previous ones."""
    previous = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    return previous


@contextlib.contextmanager
def algorithm_settings(device: torch.device, deterministic: bool, tf32: bool = False):
    """The process-wide algorithm choices of one training run, restored afterwards.

    Deterministic: torch.use_deterministic_algorithms, cuDNN's deterministic kernels, and the fixed
    cuBLAS workspace that makes cuBLAS deterministic (checked when an operation runs, so set here).
    Otherwise, on CUDA, cuDNN's benchmark mode: for every new input shape it times the candidate
    convolution algorithms once and keeps the fastest (training uses one or two shapes).
    TF32 (a 10-bit mantissa in the GPU's float32 convolutions and matrix products; cuDNN uses it
    by default) only where asked: a bf16 run has reduced precision anyway, a float32 run (the
    paper profile) is float32 throughout."""
    previous = set_algorithms(device, deterministic, tf32)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[:2]
        torch.use_deterministic_algorithms(previous[2], warn_only=previous[3])
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous[4:]
