"""The compression hook run after every greedy stage, by name (`compress.hook`).

`prune` removes a fraction of the new block's output filters (compress.prune), cuts the head's
input to match, and fine-tunes block + head against the auxiliary loss.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..config import CompressConfig
from ..errors import ConfigError
from ..measure.size import output_shape
from ..train.loop import Chain, train
from ..train.modes import eval_mode
from .context import AfterHook, Hook, Recorder, StageContext
from .graph import prune_stage, replay
from .prune import accumulate_gradients, prune_block
from .reconstruct import refit


def none_hook(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> tuple[nn.Module, nn.Module]:
    return ctx.block, ctx.head


def cut_filters(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> list[int] | dict | None:
    """Remove ctx.ratio of the block's filters in place (and the head's matching inputs), record the
    `pruned` phase, return what was removed (falsy: the model is unchanged): a paper block's filter
    indices, or for any module (ctx.graph) its pruning record, the trace finding what is coupled
    to it in the block, the head and the next block's input."""
    block, head = ctx.block, ctx.head
    before = output_shape(block, ctx.input_shape)[0]
    start = time.perf_counter()
    images = cfg.refit_images()
    uncut = copy.deepcopy(nn.Sequential(block, head)) if images else None
    gradients = lambda: accumulate_gradients(ctx, block, head, cfg.taylor_batches)  # noqa: E731
    if ctx.graph:
        cut = prune_stage(block, head, ctx.next_block, ctx.input_shape, ctx.ratio, cfg.importance, cfg.round_to,
                          cfg.scope, gradients=gradients, agree=ctx.dist.broadcast, widths=ctx.widths)
        removed = cut.as_dict() if cut.cuts else None
    else:
        removed = prune_block(block, head, ctx.input_shape, ctx.ratio, cfg.importance, cfg.round_to,
                              gradients=gradients, agree=ctx.dist.broadcast)
    if removed and uncut is not None:
        refit_after_cut(ctx, uncut, images)
    if removed:
        ctx.dist.check_same([block, head], f"stage {ctx.stage + 1}: pruned weights")
        record("pruned", block, head, time.perf_counter() - start, width_before=before, removed=removed)
    return removed


def refit_after_cut(ctx: StageContext, uncut: nn.Module, images: int) -> list[str]:
    """Refit the pruned block + head's layers that lost inputs to `uncut`'s outputs (compress.reconstruct)
    on `images` augmented training images through the frozen prefix, all in eval mode."""
    def batches():  # drawn again for every layer refit: a large map's features are not kept
        # Its own random stream, seeded by the stage: the training batches after the cut stay those
        # of a run without the refit.
        gen, seen = torch.Generator().manual_seed(ctx.stage), 0
        for xb, _ in ctx.ds.train_batches(ctx.train_cfg.batch_size, ctx.norm, gen):
            xb = xb[: images - seen]
            yield ctx.prefix(xb)
            seen += len(xb)
            if seen >= images:
                return
    pruned = nn.Sequential(ctx.block, ctx.head)
    with torch.no_grad(), eval_mode(ctx.prefix, ctx.block, ctx.head, uncut):
        names = refit(uncut, pruned, batches, torch.Generator().manual_seed(ctx.stage))
    for name in names:  # rank 0's solution on every rank: solves on two devices may differ in the last bit
        weight = pruned.get_submodule(name).weight
        weight.data.copy_(ctx.dist.broadcast(weight.detach().cpu()))
    return names


def replay_cut(ctx: StageContext, removed: list[int] | dict | None) -> None:
    """Cut again exactly what cut_filters removed (a resumed stage repeating a recorded cut)."""
    if not removed:
        return
    if ctx.graph:
        replay(ctx.block, ctx.head, ctx.next_block, ctx.input_shape, removed)
    else:
        prune_block(ctx.block, ctx.head, ctx.input_shape, ctx.ratio, "l1", replay=removed)


def finetune(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> None:
    """Train the pruned block + head for cfg.finetune() epochs against the auxiliary loss, recorded."""
    epochs = cfg.finetune()
    if epochs > 0:
        stats = train(Chain([(ctx.block, ctx.head)], ctx.prefix), ctx.ds, ctx.norm, ctx.train_cfg, epochs,
                      cfg.finetune_lr, cfg.finetune_schedule, ctx.device, ctx.generator,
                      on_step=record.progress("fine-tune"), dist=ctx.dist).stats[0]
        record("finetuned", ctx.block, ctx.head, stats.seconds, stats=stats, epochs=epochs)


def prune_hook(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> tuple[nn.Module, nn.Module]:
    """After training: cut, then fine-tune (a ratio that cuts nothing leaves the model unchanged)."""
    if cut_filters(ctx, cfg, record):
        finetune(ctx, cfg, record)
    return ctx.block, ctx.head


HOOKS: dict[str, Hook] = {"none": Hook(none_hook), "prune": Hook(prune_hook, cut=cut_filters)}


def register_hook(name: str, hook: Hook | AfterHook) -> None:
    """Make a user hook selectable as compress.hook = name: a function run after each stage is
    trained, taking (StageContext, CompressConfig, Recorder) and returning (block, head); or a
    Hook that can also cut inside the schedule."""
    HOOKS[name] = hook if isinstance(hook, Hook) else Hook(hook)


def get_hook(name: str) -> Hook:
    if name not in HOOKS:
        raise ConfigError(f"unknown compression hook '{name}'; valid: {', '.join(HOOKS)}")
    return HOOKS[name]
