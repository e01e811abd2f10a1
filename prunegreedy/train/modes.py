"""Module modes (frozen, eval) and numeric precision (bf16 autocast where it pays)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn


def has_fast_cpu_bf16() -> bool:
    """bf16 autocast pays off only with native bf16 instructions; on plain AVX2 it is ~4x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and has_fast_cpu_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def freeze(module: nn.Module) -> nn.Module:
    """Frozen prefix: no gradients, eval mode (BatchNorm running statistics do not move)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Eval mode inside, and afterwards every submodule's own mode back.

    Restoring with module.train(flag) would be wrong: a fresh nn.Sequential around frozen blocks
    is in train mode and would switch them (and their BN statistics) back to training.
    """
    subs = [m for mod in modules for m in mod.modules()]
    modes = [m.training for m in subs]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, mode in zip(subs, modes):
            m.training = mode
