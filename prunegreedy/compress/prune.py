"""Pruning operations: cut a block's filters (greedy hook) or every block's (prune-after-training).

torch-pruning traces the coupled layers (compress.graph): the conv's filters, its BN, and the
consumer's input channels shrink together. Earlier blocks, the head's hidden convs and its final
linear output are outside the scope: only the traced block (and its consumer) is touched.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..measure.size import output_shape
from ..nn.blocks import cut_input
from ..train.modes import autocast, autocast_dtype, eval_mode
from .context import StageContext
from .graph import Agree, Cut, PruneRecord, coupled_groups, kept_filters, prune_stage, trace_groups
from .graph import replay as graph_replay
from .importance import NEEDS_GRADIENTS, check_importance, lowest


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


def prune_block(block: nn.Module, head: nn.Module, input_shape: tuple[int, int, int], ratio: float,
                importance: str, round_to: int = 1,
                gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x,
                replay: list[int] | None = None) -> list[int]:
    """Remove the least important output filters of a paper block in place; return their indices.

    The block's one filter group comes from the graph traced over block + head (compress.graph):
    the conv, its BN and the head's input shrink together. `replay` cuts exactly those filters
    instead (a resumed run repeating a recorded cut).
    """
    if replay is None:
        record = prune_stage(block, head, None, input_shape, ratio, importance, round_to, gradients=gradients,
                             agree=agree)
        return list(_one_cut(record.cuts, block).removed) if record.cuts else []
    if replay:
        group = _one_cut(coupled_groups(block, head, None, input_shape), block)
        graph_replay(block, head, None, input_shape, PruneRecord((Cut(group.root, group.width, tuple(replay),
                                                                      group.kind),)))
    return list(replay)


def _one_cut(groups: Sequence, block: nn.Module):
    """A paper block has one filter group (its conv's); anything else is not a paper block."""
    if len(groups) != 1:
        raise SpecError(f"{type(block).__name__} has {len(groups)} filter groups, not a paper block's one: prune it "
                        f"as a stage of any module (compress.graph)")
    return groups[0]


def prune_network(blocks: list[nn.Module], head: nn.Module | None, input_shape: tuple[int, int, int],
                  ratios: list[float], importance: str, round_to: int = 1,
                  gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x,
                  heads: dict[int, nn.Module] | None = None,
                  replay: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """Cut every paper block's filters in one shot; return {block index: removed}.

    Prune-after-training passes the last `head`; decoupled training passes `heads`, every block's
    own head ({block index: head}). All scores are taken on the trained network before any cut.
    Block j's filters are scored on the group traced over it and its head, if it has one; psi
    hides the next block's input weights from torch-pruning's tracer, so the next block cuts its
    own input (nn.blocks.cut_input: 4 channels per filter after psi). `replay` repeats recorded cuts.
    """
    consumers = heads if heads is not None else {len(blocks) - 1: head}
    check_importance(importance, gradients)
    if replay is None and importance in NEEDS_GRADIENTS:
        gradients()
    plans, shape = [], input_shape
    for j, block in enumerate(blocks):
        consumer = consumers.get(j)
        graph, found = trace_groups(block, nn.Identity() if consumer is None else consumer, None, shape)
        info, root = _one_cut(found, block)
        keep = kept_filters(info.width, ratios[j], round_to)
        if replay is not None:
            plans.append((graph, root, list(replay.get(j, []))))
        elif keep < info.width:  # scored on the whole traced group, before any block is cut
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            idxs=list(range(info.width)))
            plans.append((graph, root, lowest(group, importance, info.width - keep)))
        else:
            plans.append((graph, root, []))
        shape = output_shape(block, shape)
    if replay is None:
        plans = [(g, root, removed) for (g, root, _), removed in zip(plans, agree([r for _, _, r in plans]))]
    for j, (block, (graph, root, removed)) in enumerate(zip(blocks, plans)):
        if not removed:
            continue
        graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs=removed).prune()
        if j + 1 < len(blocks):
            cut_input(blocks[j + 1], removed)
    for p in [p for m in [*blocks, *consumers.values()] for p in m.parameters()]:
        p.grad = None
    return {j: removed for j, (_, _, removed) in enumerate(plans) if removed}
