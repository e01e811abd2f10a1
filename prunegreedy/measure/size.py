"""Size and cost of (parts of) a network: parameters and MACs.

MACs are counted with fvcore, whose "flops" count one multiply-add as one: they are MACs, and
we call them that everywhere. Counting runs on an eval-mode copy on the CPU, so BatchNorm
running statistics of the real model never move.
"""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


_MACS: dict[tuple[str, tuple[int, ...]], int] = {}  # (architecture, input shape) -> MACs


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input of shape (C, H, W).

    MACs depend on the architecture alone, not on the weights: a count is kept per (module
    structure as printed, with every layer's sizes; input shape), so each phase of each stage
    traces fvcore once per new architecture instead of once per record (seconds on a GPU run).
    """
    key = (str(module), tuple(input_shape))
    if key not in _MACS:
        _MACS[key] = _count_macs(module, tuple(input_shape))
    return _MACS[key]


def _count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis

    model = copy.deepcopy(module).float().cpu().eval()
    x = torch.zeros(1, *input_shape)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracing deprecation notices on current torch
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)  # pixel_unshuffle (psi) moves data, costs no MACs
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())


def output_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    model = copy.deepcopy(module).float().cpu().eval()
    with torch.no_grad():
        return tuple(model(torch.zeros(1, *input_shape)).shape[1:])

