"""Pruning operations: cut a block's filters (greedy hook) or every block's (prune-after-training).

torch-pruning traces the coupled layers: the conv's filters, its BN, and the consumer's input
channels shrink together. Earlier blocks, the head's hidden convs and its final linear output
are outside the scope: only the traced block (and its consumer) is touched.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..nn.blocks import Psi
from ..train.modes import autocast, autocast_dtype, eval_mode
from .context import StageContext
from .importance import NEEDS_GRADIENTS, check_importance, lowest


def kept_filters(n: int, ratio: float, round_to: int = 1) -> int:
    """Filters left after removing `ratio` of `n`, rounded to a multiple of round_to (at least one)."""
    keep = round(n * (1.0 - ratio) / round_to) * round_to
    return int(min(n, max(round_to if round_to <= n else n, keep)))


def accumulate_gradients(ctx: StageContext, block: nn.Module, head: nn.Module, batches: int) -> None:
    """Sum the auxiliary-loss gradients of a few training batches into .grad (Taylor importance)."""
    amp = autocast_dtype(ctx.train_cfg.amp, ctx.device)
    for p in list(block.parameters()) + list(head.parameters()):
        p.grad = None
    # Eval mode: gradients at the trained BN statistics, without moving any of them.
    with eval_mode(ctx.prefix, block, head):
        for i, (xb, yb) in enumerate(ctx.ds.train_batches(ctx.train_cfg.batch_size, ctx.norm, ctx.generator)):
            if i >= batches:
                break
            with autocast(ctx.device, amp):
                with torch.no_grad():
                    feats = ctx.prefix(xb)
                loss = F.cross_entropy(head(block(feats)).float(), yb)
            loss.backward()


def _trace_filters(block: nn.Module, consumer: nn.Module | None, input_shape: tuple[int, int, int]):
    """block.conv's filter group as torch-pruning traces it: conv, BN, and the consumer's input if given."""
    module = nn.Sequential(block, consumer) if consumer is not None else block
    device = next(block.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    with eval_mode(module):  # tracing runs a forward pass: keep BN statistics where they are
        graph = tp.DependencyGraph().build_dependency(module, example_inputs=example, verbose=False)
    n = block.conv.out_channels
    return graph, graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=list(range(n)))


Agree = Callable[[Any], Any]  # every rank gets rank 0's decision (Dist.broadcast); identity alone


def prune_block(block: nn.Module, head: nn.Module, input_shape: tuple[int, int, int], ratio: float,
                importance: str, round_to: int = 1,
                gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x,
                replay: list[int] | None = None) -> list[int]:
    """Remove the least important output filters of block.conv in place; return their indices.

    block + head are traced together so the BN and the head's input shrink with the conv.
    `replay` cuts exactly those filters instead (a resumed run repeating a recorded cut).
    """
    check_importance(importance, gradients)
    n = block.conv.out_channels
    keep = kept_filters(n, ratio, round_to) if replay is None else n - len(replay)
    if keep == n:
        return []
    graph, group = _trace_filters(block, head, input_shape)
    if replay is None and importance in NEEDS_GRADIENTS:
        gradients()
    removed = list(replay) if replay is not None else agree(lowest(group, importance, n - keep))
    graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=removed).prune()
    for p in list(block.parameters()) + list(head.parameters()):
        p.grad = None
    return removed


def prune_network(blocks: list[nn.Module], head: nn.Module | None, input_shape: tuple[int, int, int],
                  ratios: list[float], importance: str, round_to: int = 1,
                  gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x,
                  heads: dict[int, nn.Module] | None = None,
                  replay: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """Cut every block's filters in one shot; return {block index: removed}.

    Prune-after-training passes the last `head`; decoupled training passes `heads`, every block's
    own head ({block index: head}). All scores are taken on the trained network before any cut.
    Block j's filters are scored on their conv + BN and its head's input, if it has one; psi
    hides the next block's input weights from torch-pruning's tracer, so that input cut (4
    channels per filter after psi) is made here directly. `replay` repeats recorded cuts.
    """
    consumers = heads if heads is not None else {len(blocks) - 1: head}
    check_importance(importance, gradients)
    if replay is None and importance in NEEDS_GRADIENTS:
        gradients()
    plans, shape = [], input_shape
    for j, block in enumerate(blocks):
        n = block.conv.out_channels
        keep = kept_filters(n, ratios[j], round_to)
        graph, group = _trace_filters(block, consumers.get(j), shape)
        if replay is not None:
            plans.append((graph, list(replay.get(j, []))))
        else:
            plans.append((graph, lowest(group, importance, n - keep) if keep < n else []))
        with torch.no_grad(), eval_mode(block):
            shape = tuple(block(torch.zeros(1, *shape, device=next(block.parameters()).device)).shape[1:])
    if replay is None:
        plans = list(zip([g for g, _ in plans], agree([r for _, r in plans])))
    for j, (block, (graph, removed)) in enumerate(zip(blocks, plans)):
        if not removed:
            continue
        graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=removed).prune()
        if j + 1 < len(blocks):
            nxt = blocks[j + 1]
            per = 4 if isinstance(getattr(nxt, "psi", None), Psi) else 1  # psi: filter c -> inputs 4c..4c+3
            tp.prune_conv_in_channels(nxt.conv, idxs=[c * per + i for c in removed for i in range(per)])
    for p in [p for m in [*blocks, *consumers.values()] for p in m.parameters()]:
        p.grad = None
    return {j: removed for j, (_, removed) in enumerate(plans) if removed}
