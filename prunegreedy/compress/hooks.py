"""The compression hook run after every greedy stage, by name (`compress.hook`).

`prune` removes a fraction of the new block's filters (compress.network.cut_stage), cuts the head's
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
from .gradients import accumulate_gradients
from .network import cut_stage, replay_stage
from .reconstruct import refit


def none_hook(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> tuple[nn.Module, nn.Module]:
    return ctx.block, ctx.head


def cut_filters(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> dict | None:
    """Remove ctx.ratio of the block's filters in place, with what is coupled to them in the head
    and the next stage's input (compress.network.cut_stage), record the `pruned` phase, return its
    pruning record (None: the model is unchanged)."""
    block, head = ctx.block, ctx.head
    before = output_shape(block, ctx.input_shape)[0]
    start = time.perf_counter()
    images = cfg.refit_images()
    uncut = copy.deepcopy(nn.Sequential(block, head)) if images else None
    gradients = lambda: accumulate_gradients(ctx, block, head, cfg.taylor_batches)  # noqa: E731
    cut = cut_stage(ctx.net, ctx.stage, head, ctx.input_shape, ctx.ratio, cfg.importance, cfg.round_to, cfg.scope,
                    gradients=gradients, agree=ctx.dist.broadcast, widths=ctx.widths)
    removed = cut.as_dict() if cut.cuts else None
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


def replay_cut(ctx: StageContext, removed: dict | None) -> None:
    """Cut again exactly what cut_filters removed (a resumed stage repeating a recorded cut)."""
    if removed:
        replay_stage(ctx.net, ctx.stage, ctx.head, ctx.input_shape, removed)


def finetune(ctx: StageContext, cfg: CompressConfig, record: Recorder) -> None:
    """Train the pruned block + head for the stage's cfg.finetune epochs against the auxiliary loss, recorded."""
    epochs = cfg.finetune(ctx.stage)
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
