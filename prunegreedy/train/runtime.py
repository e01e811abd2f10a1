"""Device choice and the CPU settings that make training fast on a small machine."""
from __future__ import annotations

import ctypes
import os

import torch

from ..errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def tune_cpu_allocator() -> bool:
    """Keep large activations in the heap instead of fresh mmaps.

    A 128x256x16x16 fp32 activation (33 MB) is above glibc's mmap threshold, so every step maps and
    page-faults it again; width-256 layers ran 2-4x slower. Both settings are needed together.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 16 << 30))
    except (OSError, AttributeError):
        return False  # not glibc (macOS, musl): nothing to tune


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, else MPS, else CPU. An explicit device that is absent is an error."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name not in available:
        raise ConfigError(f"unknown device '{name}'; valid: auto, {', '.join(available)}")
    if not available[name]:
        raise ConfigError(f"device '{name}' is not available on this machine; valid here: auto, "
                          f"{', '.join(d for d, ok in available.items() if ok)}")
    return torch.device(name)


def setup(device: torch.device, threads: int | None) -> None:
    if device.type == "cpu":
        tune_cpu_allocator()
        torch.set_num_threads(threads or os.cpu_count() or 1)
