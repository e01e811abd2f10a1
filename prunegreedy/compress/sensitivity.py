"""Sensitivity of a trained stage: its head's held-out accuracy with block j pruned at each ratio.

Right after stage j trains, deep copies of block j + head j are pruned (compress.graph.prune_stage,
as the hook cuts them) and evaluated, without fine-tuning, on the held-out images. The
global random state is restored before each copy is pruned, and Taylor gradients are drawn with a
copy of the stage's batch generator, so every copy loses exactly the filters the hook would cut at
that ratio, and the run's own random streams are left as they were.

Pruning block j's output filters leaves its kept channels' outputs exactly as they were, so the
prefix and block j run once per batch and every pruned head reads its kept channels of that output
(after the pool of a pooled or mlp-sr head, which works channel by channel: one pool per batch, and
each copy slices a map 16 times smaller).
The heads' BatchNorm statistics are then re-estimated on training images (`calibration`): a head
whose input lost channels sees other conv sums than it was trained on, and with stale statistics
its accuracy collapses far more than the cut deserves (EagleEye's "adaptive BN", ECCV 2020). Every
copy is recalibrated, the unpruned head too, so a drop measures the cut and not the calibration.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
from torch import nn

from ..data.base import Holdout, Normalize
from ..measure.size import count_macs, count_params, output_shape
from ..train.modes import autocast, eval_mode
from .graph import coupled_groups, kept_filters, prune_stage

# gradients(block copy, head copy): fill .grad for Taylor importance (None for other criteria)
Gradients = Callable[[nn.Module, nn.Module], None]
# apply(head, kept channels of the block output): its logits; the output may have gone through a
# channel-wise front first (the pooled heads' shrink), shared by every copy
Apply = Callable[[nn.Module, torch.Tensor], torch.Tensor]
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _call(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return head(z)


def _classify(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return head.classify(z)


def split_head(head: nn.Module) -> tuple[nn.Module, Apply]:
    """(the channel-wise front every copy of the head shares, how a copy goes on from there)."""
    if hasattr(head, "classify"):  # pooled, mlp-sr: shrink (an average pool), then classify
        return head.shrink, _classify
    return nn.Identity(), _call


def _slice(z: torch.Tensor, kept: list[int] | None) -> torch.Tensor:
    return z if kept is None else z[:, kept]


def _outputs(prefix: nn.Module, block: nn.Module, front: nn.Module, x: torch.Tensor, batch_size: int,
             norm: Normalize, device: torch.device, amp: torch.dtype | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, front(block(prefix(x)))) per batch of uint8 images x, all in eval mode."""
    with eval_mode(prefix, block, front):
        for start in range(0, len(x), batch_size):
            with autocast(device, amp):
                yield start, front(block(prefix(norm(x[start:start + batch_size]))))


@torch.no_grad()
def recalibrate(heads: list[tuple[nn.Module, list[int] | None]], outputs: Iterator[tuple[int, torch.Tensor]],
                device: torch.device, amp: torch.dtype | None = None, apply: Apply = _call) -> None:
    """Re-estimate the BatchNorm statistics of every (head, kept channels or None for all) on the
    block outputs: the plain average of the batches' statistics (momentum None), the rest of each
    head in eval mode."""
    norms = [m for head, _ in heads for m in head.modules() if isinstance(m, BATCH_NORMS)]
    momenta = [m.momentum for m in norms]
    with eval_mode(*[h for h, _ in heads]):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for _, out in outputs:
            with autocast(device, amp):
                for head, kept in heads:
                    apply(head, _slice(out, kept))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@torch.no_grad()
def holdout_accuracies(heads: list[tuple[nn.Module, list[int] | None]], outputs: Iterator[tuple[int, torch.Tensor]],
                       y: torch.Tensor, device: torch.device, amp: torch.dtype | None = None,
                       apply: Apply = _call) -> list[float]:
    """Held-out top-1 accuracy (%) of each (head, kept channels) on the block outputs, labels y."""
    correct = [0] * len(heads)
    with eval_mode(*[h for h, _ in heads]):
        for start, out in outputs:
            yb = y[start:start + len(out)]
            with autocast(device, amp):
                for i, (head, kept) in enumerate(heads):
                    correct[i] += int((apply(head, _slice(out, kept)).float().argmax(1) == yb).sum().item())
    return [100.0 * c / len(y) for c in correct]


def measure(prefix_blocks: list[nn.Module], block: nn.Module, head: nn.Module, input_shape: tuple[int, int, int],
            ratios: list[float], importance: str, round_to: int, holdout: Holdout, norm: Normalize,
            batch_size: int, device: torch.device, amp: torch.dtype | None = None,
            gradients: Gradients | None = None, calibration: torch.Tensor | None = None,
            next_block: nn.Module | None = None, scope: str = "internal") -> list[dict]:
    """One row per ratio (0, the trained block, first): ratio, width, held-out accuracy, and the
    parameters and MACs of the backbone so far (blocks 1..j-1 and the pruned copy of block j).

    calibration: uint8 training images (none of them held out) on which every head copy's BatchNorm
    statistics are re-estimated before it is evaluated; None evaluates with the trained statistics.
    Each copy is cut as the hook cuts it (with `next_block` and `scope`). A stage whose cut is of
    its output channels alone keeps the outputs of the channels it keeps, so its copies share one
    pass of the trained block; a cut inside the stage changes them, so each copy runs on its own.
    The stage's own block and head are never changed.
    """
    if not _output_cuts_only(block, head, next_block, input_shape, scope):
        return _measure_stage(prefix_blocks, block, head, input_shape, ratios, importance, round_to, holdout, norm,
                              batch_size, device, amp, gradients, calibration, next_block, scope)
    n = output_shape(block, input_shape)[0]
    ratios = [0.0] + sorted(r for r in ratios if r > 0)
    # One pruned copy per kept width: (block copy, head copy, kept channels of the trained block).
    copies: dict[int, tuple[nn.Module, nn.Module, list[int] | None]] = {
        n: (block, copy.deepcopy(head) if calibration is not None else head, None)}
    for r in ratios:
        width = kept_filters(n, r, round_to)
        if width in copies:
            continue
        b, h = copy.deepcopy(block), copy.deepcopy(head)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            record = prune_stage(b, h, copy.deepcopy(next_block), input_shape, r, importance, round_to, scope,
                                 gradients=(lambda b=b, h=h: gradients(b, h)) if gradients is not None else None)
        gone = {i for c in record.cuts for i in c.removed}
        copies[width] = (b, h, [i for i in range(n) if i not in gone])  # torch-pruning keeps the order
    prefix = nn.Sequential(*prefix_blocks)
    heads = [(h, kept) for _, h, kept in copies.values()]
    front, apply = split_head(head)
    if calibration is not None:
        recalibrate(heads, _outputs(prefix, block, front, calibration, batch_size, norm, device, amp), device, amp,
                    apply)
    outputs = _outputs(prefix, block, front, holdout.x, batch_size, norm, device, amp)
    accs = dict(zip(copies, holdout_accuracies(heads, outputs, holdout.y, device, amp, apply)))
    sizes = {w: _sizes(prefix_blocks, b, holdout) for w, (b, _, _) in copies.items()}
    return [{"ratio": r, "width": w, "holdout_acc": round(accs[w], 4), "params_backbone": sizes[w][0],
             "macs_backbone": sizes[w][1]} for r, w in ((r, kept_filters(n, r, round_to)) for r in ratios)]


def _output_cuts_only(block: nn.Module, head: nn.Module, next_block: nn.Module | None,
                      input_shape: tuple[int, ...], scope: str) -> bool:
    """Whether a cut of the stage narrows one group alone: the stage's output channels."""
    groups = coupled_groups(block, head, next_block, input_shape, scope)
    return len(groups) == 1 and groups[0].kind == "output"


def _sizes(prefix_blocks: list[nn.Module], block: nn.Module, holdout: Holdout) -> tuple[int, int]:
    backbone = nn.Sequential(*prefix_blocks, block)
    return count_params(backbone), count_macs(backbone, tuple(holdout.x.shape[1:]))


def _measure_stage(prefix_blocks, block, head, input_shape, ratios, importance, round_to, holdout, norm, batch_size,
                   device, amp, gradients, calibration, next_block, scope) -> list[dict]:
    """measure() for a stage of any module: one pruned copy of block + head (and of the next block,
    so that the trace couples what the hook's does) per ratio, each run on its own."""
    ratios = [0.0] + sorted(r for r in ratios if r > 0)
    prefix = nn.Sequential(*prefix_blocks)
    rows = []
    for r in ratios:
        b, h, nxt = copy.deepcopy((block, head, next_block))
        if r > 0:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                prune_stage(b, h, nxt, input_shape, r, importance, round_to, scope,
                            gradients=(lambda b=b, h=h: gradients(b, h)) if gradients is not None else None)
        front, apply = split_head(h)
        if calibration is not None:
            recalibrate([(h, None)], _outputs(prefix, b, front, calibration, batch_size, norm, device, amp), device,
                        amp, apply)
        outputs = _outputs(prefix, b, front, holdout.x, batch_size, norm, device, amp)
        acc, = holdout_accuracies([(h, None)], outputs, holdout.y, device, amp, apply)
        params, macs = _sizes(prefix_blocks, b, holdout)
        rows.append({"ratio": r, "width": output_shape(b, input_shape)[0], "holdout_acc": round(acc, 4),
                     "params_backbone": params, "macs_backbone": macs})
    return rows
