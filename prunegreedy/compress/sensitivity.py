"""Sensitivity of a trained stage: its head's held-out accuracy with block j pruned at each ratio.

Right after stage j trains, deep copies of block j + head j are pruned (compress.prune.prune_block,
the same criterion the hook uses) and evaluated, without fine-tuning, on the held-out images. The
global random state is restored before each copy is pruned, and Taylor gradients are drawn with a
copy of the stage's batch generator, so every copy loses exactly the filters the hook would cut at
that ratio, and the run's own random streams are left as they were. The frozen prefix runs once
per held-out batch for all copies.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..data.base import Holdout, Normalize
from ..measure.size import count_macs, count_params
from ..train.modes import autocast, eval_mode
from .prune import kept_filters, prune_block

# gradients(block copy, head copy): fill .grad for Taylor importance (None for other criteria)
Gradients = Callable[[nn.Module, nn.Module], None]


@torch.no_grad()
def holdout_accuracies(prefix: nn.Module, models: list[tuple[nn.Module, nn.Module]], holdout: Holdout,
                       norm: Normalize, batch_size: int, device: torch.device,
                       amp: torch.dtype | None = None) -> list[float]:
    """Held-out top-1 accuracy (%) of head(block(prefix(x))) for each (block, head)."""
    correct = [0] * len(models)
    with eval_mode(prefix, *[m for pair in models for m in pair]):
        for xb, yb in holdout.eval_batches(batch_size, norm):
            with autocast(device, amp):
                feats = prefix(xb)
                for i, (block, head) in enumerate(models):
                    correct[i] += int((head(block(feats)).float().argmax(1) == yb).sum().item())
    return [100.0 * c / len(holdout) for c in correct]


def measure(prefix_blocks: list[nn.Module], block: nn.Module, head: nn.Module, input_shape: tuple[int, int, int],
            ratios: list[float], importance: str, round_to: int, holdout: Holdout, norm: Normalize,
            batch_size: int, device: torch.device, amp: torch.dtype | None = None,
            gradients: Gradients | None = None) -> list[dict]:
    """One row per ratio (0, the trained block, first): ratio, width, held-out accuracy, and the
    parameters and MACs of the backbone so far (blocks 1..j-1 and the pruned copy of block j)."""
    n = block.conv.out_channels
    ratios = [0.0] + sorted(r for r in ratios if r > 0)
    copies: dict[int, tuple[nn.Module, nn.Module]] = {n: (block, head)}  # one pruned copy per kept width
    for r in ratios:
        width = kept_filters(n, r, round_to)
        if width in copies:
            continue
        b, h = copy.deepcopy(block), copy.deepcopy(head)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            prune_block(b, h, input_shape, r, importance, round_to,
                        gradients=(lambda b=b, h=h: gradients(b, h)) if gradients is not None else None)
        copies[width] = (b, h)
    image_shape = tuple(holdout.x.shape[1:])
    prefix = nn.Sequential(*prefix_blocks)
    accs = dict(zip(copies, holdout_accuracies(prefix, list(copies.values()), holdout, norm, batch_size, device,
                                               amp)))
    sizes = {w: (count_params(nn.Sequential(*prefix_blocks, b)), count_macs(nn.Sequential(*prefix_blocks, b),
                                                                           image_shape))
             for w, (b, _) in copies.items()}
    return [{"ratio": r, "width": w, "holdout_acc": round(accs[w], 4), "params_backbone": sizes[w][0],
             "macs_backbone": sizes[w][1]} for r, w in ((r, kept_filters(n, r, round_to)) for r in ratios)]
