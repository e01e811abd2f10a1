"""Cuts inside a block's training schedule (compress.at < 1): when they come, and what the rest of
the schedule learns from.

One cut by default, at `compress.at`. With `compress.cuts` n > 1 the cuts come at at/n, 2at/n,
..., at of the schedule, each to the ratio of Zhu and Gupta's cubic schedule ("To prune, or not to
prune", 2017): r_i = r (1 - (1 - i/n)^3), so most filters go early, while the block still has most
of its schedule to recover. With `compress.distill` a > 0 the pruned block + head learn, for the
rest of the schedule, from (1 - a) x cross-entropy + a x T^2 KL(their softened outputs || those of
the block + head as they were just before the first cut), a frozen copy (Hinton et al., 2015).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..train.modes import freeze


def cut_plan(at: float, cuts: int, ratio: float) -> list[tuple[float, float]]:
    """(fraction of the schedule, ratio of the original filters cut by then) of every cut."""
    return [(at * i / cuts, ratio * (1 - (1 - i / cuts) ** 3)) for i in range(1, cuts + 1)]


def teacher_of(block: nn.Module, head: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Frozen copies of block + head as they are now: what a distilled schedule learns from."""
    return freeze(copy.deepcopy(block)), freeze(copy.deepcopy(head))


def distill_loss(teacher: tuple[nn.Module, nn.Module], a: float, t: float, label_smoothing: float = 0.0):
    """The loss of a chain pair (loop.Chain.loss) that also learns from the teacher's soft outputs:
    (1 - a) x cross-entropy + a x t^2 KL(softened by temperature t)."""
    block, head = teacher

    def loss(j: int, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.softmax(head(block(x)).float() / t, dim=1)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        kd = F.kl_div(F.log_softmax(logits.float() / t, dim=1), soft, reduction="batchmean") * t * t
        return (1 - a) * ce + a * kd
    return loss
