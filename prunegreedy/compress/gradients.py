"""The gradients a criterion scores with (Taylor importance), from a stage's own loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..train.modes import autocast, autocast_dtype, eval_mode
from .context import StageContext


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
