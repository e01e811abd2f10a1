"""The compression hook run after every greedy stage, by name (`compress.hook`).

`prune` removes a fraction of the new block's output filters (compress.prune), cuts the head's
input to match, and fine-tunes block + head against the auxiliary loss.
"""
from __future__ import annotations

import time

from torch import nn

from ..config import CompressConfig
from ..errors import ConfigError
from ..train.loop import train_stage
from .context import Hook, Recorder, StageContext
from .prune import accumulate_gradients, prune_block


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
