"""The compression hook run after every greedy stage.

`prune` removes a fraction of the new block's output filters with torch-pruning (structurally:
tensors shrink), cuts the head's input to match, and fine-tunes block + head against the
auxiliary loss. Earlier blocks, the head's hidden convs and its final linear output are outside
the pruning scope: only block j and its head are traced, and only block j's conv is a root.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .blocks import Psi
from .config import CompressConfig, TrainConfig
from .data import Dataset, Normalize
from .errors import ConfigError
from .distributed import Dist
from .train import SINGLE, StepCallback, autocast, autocast_dtype, eval_mode, train_stage


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


class Recorder(Protocol):
    """Measures and records one phase of the stage (the pipeline provides it)."""

    def __call__(self, phase: str, block: nn.Module, head: nn.Module, seconds: float, **extra) -> None: ...

    def progress(self, desc: str) -> StepCallback | None: ...


Hook = Callable[[StageContext, CompressConfig, Recorder], "tuple[nn.Module, nn.Module]"]


# ---------------------------------------------------------------------------------------------
# What to cut: importance criteria, each a factory of a torch-pruning Importance

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}
NEEDS_GRADIENTS = {"taylor"}


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


def _lowest(group, importance: str, n_remove: int) -> list[int]:
    """Indices of the n_remove least important filters of the group, sorted."""
    with torch.no_grad():
        scores = IMPORTANCES[importance]()(group)
    if scores is None:
        raise ConfigError(f"importance '{importance}' does not apply to this block (no BatchNorm?); "
                          f"choose one of: {', '.join(k for k in IMPORTANCES if k != importance)}")
    # Stable sort so ties (e.g. dead filters with zero weight) are cut in index order: deterministic.
    order = torch.sort(scores.float().cpu(), stable=True).indices
    return sorted(order[:n_remove].tolist())


def _check_importance(importance: str, gradients: Callable[[], None] | None) -> None:
    if importance not in IMPORTANCES:
        raise ConfigError(f"unknown importance '{importance}'; valid: {', '.join(IMPORTANCES)}")
    if importance in NEEDS_GRADIENTS and gradients is None:
        raise ConfigError(f"importance '{importance}' needs training batches for gradients")


Agree = Callable[[Any], Any]  # every rank gets rank 0's decision (Dist.broadcast); identity alone


def prune_block(block: nn.Module, head: nn.Module, input_shape: tuple[int, int, int], ratio: float,
                importance: str, round_to: int = 1,
                gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x) -> list[int]:
    """Remove the least important output filters of block.conv in place; return their indices.

    block + head are traced together so the BN and the head's input shrink with the conv.
    """
    _check_importance(importance, gradients)
    n = block.conv.out_channels
    keep = kept_filters(n, ratio, round_to)
    if keep == n:
        return []
    graph, group = _trace_filters(block, head, input_shape)
    if importance in NEEDS_GRADIENTS:
        gradients()
    removed = agree(_lowest(group, importance, n - keep))
    graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=removed).prune()
    for p in list(block.parameters()) + list(head.parameters()):
        p.grad = None
    return removed


def prune_network(blocks: list[nn.Module], head: nn.Module, input_shape: tuple[int, int, int],
                  ratios: list[float], importance: str, round_to: int = 1,
                  gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x) -> dict[int, list[int]]:
    """Prune-after-training: cut every block's filters in one shot; return {block index: removed}.

    All scores are taken on the trained network before any cut. Block j's filters are scored on
    their conv + BN (the last block's also on the head's input, as the greedy hook does); psi
    hides the next block's input weights from torch-pruning's tracer, so that input cut (4
    channels per filter after psi) is made here directly.
    """
    _check_importance(importance, gradients)
    if importance in NEEDS_GRADIENTS:
        gradients()
    plans, shape = [], input_shape
    for j, block in enumerate(blocks):
        n = block.conv.out_channels
        keep = kept_filters(n, ratios[j], round_to)
        last = j == len(blocks) - 1
        graph, group = _trace_filters(block, head if last else None, shape)
        plans.append((graph, _lowest(group, importance, n - keep) if keep < n else []))
        with torch.no_grad(), eval_mode(block):
            shape = tuple(block(torch.zeros(1, *shape, device=next(block.parameters()).device)).shape[1:])
    plans = list(zip([g for g, _ in plans], agree([r for _, r in plans])))
    for j, (block, (graph, removed)) in enumerate(zip(blocks, plans)):
        if not removed:
            continue
        graph.get_pruning_group(block.conv, tp.prune_conv_out_channels, idxs=removed).prune()
        if j + 1 < len(blocks):
            nxt = blocks[j + 1]
            per = 4 if isinstance(getattr(nxt, "psi", None), Psi) else 1  # psi: filter c -> inputs 4c..4c+3
            tp.prune_conv_in_channels(nxt.conv, idxs=[c * per + i for c in removed for i in range(per)])
    for p in [p for b in blocks for p in b.parameters()] + list(head.parameters()):
        p.grad = None
    return {j: removed for j, (_, removed) in enumerate(plans) if removed}


# ---------------------------------------------------------------------------------------------
# Hooks

def none_hook(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> tuple[nn.Module, nn.Module]:
    return ctx.block, ctx.head


def prune_hook(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> tuple[nn.Module, nn.Module]:
    block, head = ctx.block, ctx.head
    before = block.conv.out_channels
    start = time.perf_counter()
    removed = prune_block(block, head, ctx.input_shape, ctx.ratio, cfg.importance, cfg.round_to,
                          gradients=lambda: accumulate_gradients(ctx, block, head, cfg.taylor_batches),
                          agree=ctx.dist.broadcast)
    if not removed:
        return block, head  # ratio 0 (or rounding kept everything): the model is unchanged
    prune_s = time.perf_counter() - start
    ctx.dist.check_same([block, head], f"stage {ctx.stage + 1}: pruned weights")
    record("pruned", block, head, prune_s, width_before=before, removed=removed)
    if cfg.finetune_epochs > 0:
        stats = train_stage(ctx.prefix, block, head, ctx.ds, ctx.norm, ctx.train_cfg, cfg.finetune_epochs,
                            cfg.finetune_lr, cfg.finetune_schedule, ctx.device, ctx.generator,
                            on_step=record.progress("fine-tune"), dist=ctx.dist)
        record("finetuned", block, head, stats.seconds, stats=stats, epochs=cfg.finetune_epochs)
    return block, head


HOOKS: dict[str, Hook] = {"none": none_hook, "prune": prune_hook}


def register_hook(name: str, hook: Hook) -> None:
    """Make a user hook selectable as compress.hook = name."""
    HOOKS[name] = hook


def get_hook(name: str) -> Hook:
    if name not in HOOKS:
        raise ConfigError(f"unknown compression hook '{name}'; valid: {', '.join(HOOKS)}")
    return HOOKS[name]
