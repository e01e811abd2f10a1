"""What a compression hook is given (the stage's modules, data, settings) and how it records phases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..config import CompressConfig, TrainConfig
from ..data.base import Dataset, Normalize
from ..nn.network import Network
from ..train.distributed import SINGLE, Dist
from ..train.loop import StepCallback


@dataclass
class StageContext:
    """What a hook may use: the stage's modules, the frozen prefix, the data and settings."""
    stage: int  # 0-based
    prefix: nn.Module
    block: nn.Module
    head: nn.Module
    input_shape: tuple[int, int, int]  # block input (C, H, W)
    ds: Dataset
    norm: Normalize
    train_cfg: TrainConfig
    device: torch.device
    generator: torch.Generator
    ratio: float
    dist: Dist = SINGLE
    # The network the block is stage `stage` of (nn.network): what reads the block next is cut with it.
    net: Network | None = None
    # With several cuts: each group's width before the first, so that ratio counts from the original.
    widths: dict[str, int] | None = None


class Recorder(Protocol):
    """Measures and records one phase of the stage (the pipeline provides it)."""

    def __call__(self, phase: str, block: nn.Module, head: nn.Module, seconds: float, **extra) -> None: ...

    def progress(self, desc: str) -> StepCallback | None: ...


AfterHook = Callable[[StageContext, CompressConfig, Recorder], "tuple[nn.Module, nn.Module]"]
CutHook = Callable[[StageContext, CompressConfig, Recorder], Any]  # what it removed; falsy: nothing


@dataclass(frozen=True)
class Hook:
    """A compression hook. `after` runs once a stage is trained and returns its (block, head);
    `cut`, where the hook has one, prunes in place part-way through training (compress.at < 1)
    and returns the removed filters, so the rest of the schedule trains the pruned block."""
    after: AfterHook
    cut: CutHook | None = None
