"""Decoupled greedy training (Belilovsky, Eickenberg, Oyallon, ICML 2020): every block at once.

One forward pass per batch runs through all blocks. Block j's input is block j-1's output,
detached, so no gradient crosses a block boundary; each block trains against its own auxiliary
head with its own optimizer, and is stepped as soon as its loss is known, so the autograd graph
of one block (not of the network) is alive at any time. Every block sees every epoch.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.base import Dataset, Normalize
from .distributed import SINGLE, Dist
from .loop import StageStats, StepCallback, cut_step_of, make_optimizer, momentum_of, restore_loop, steps_of
from .loop import Tally
from .modes import autocast, autocast_dtype
from .schedules import lr_at


class _Stage(nn.Module):
    """Block + its head as one module: (features for the next block, logits)."""

    def __init__(self, block: nn.Module, head: nn.Module):
        super().__init__()
        self.block, self.head = block, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.block(x)
        return h, self.head(h)


def train_decoupled(blocks: list[nn.Module], heads: list[nn.Module], ds: Dataset, norm: Normalize, cfg: TrainConfig,
                    epochs: float, lr: float, schedule: str, device: torch.device, generator: torch.Generator,
                    on_step: StepCallback | None = None, on_epoch: Callable[[dict], None] | None = None,
                    resume: dict | None = None, dist: Dist = SINGLE, cut_at: float = 1.0,
                    on_cut: Callable[[], None] | None = None) -> list[StageStats]:
    """Train every (block, head) pair for `epochs` on one common schedule; one StageStats per block.

    The loop state given to `on_epoch` (and taken back as `resume`) holds per-block running sums
    and every optimizer's momentum, so a resumed run continues exactly. `on_cut` runs once before
    the step at fraction `cut_at`: it may prune every block in place, and the optimizers are
    built anew for what is left.
    """
    def build() -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
        models = [dist.wrap(_Stage(b, h), device) for b, h in zip(blocks, heads)]
        return models, [make_optimizer([b, h], lr, cfg) for b, h in zip(blocks, heads)]

    for m in [*blocks, *heads]:
        m.train()
    models, opts = build()
    amp = autocast_dtype(cfg.amp, device)
    n = len(blocks)
    total = steps_of(epochs, ds.num_train, cfg.batch_size)
    cut_step = cut_step_of(cut_at, total) if on_cut is not None else None
    step, seen, elapsed, tally = restore_loop(resume, generator, opts, device, n)
    block_label = lambda j: f"block {j + 1}'s "  # noqa: E731
    start = time.perf_counter() - elapsed
    while step < total:
        for xb, yb in ds.train_batches(cfg.batch_size, norm, generator, shard=dist.shard):
            if step >= total:
                break
            if step == cut_step:
                on_cut()
                models, opts = build()
            rate = lr_at(step, total, lr, schedule, cfg)
            x = xb
            for j, (model, opt) in enumerate(zip(models, opts)):
                for g in opt.param_groups:
                    g["lr"] = rate
                with autocast(device, amp):
                    feats, logits = model(x)
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # block j's graph is freed here, before block j+1 runs
                opt.step()
                x = feats.detach()
                tally.add(j, step, loss, logits, yb)
            seen += len(yb)
            step += 1
            if step % Tally.CHECK_EVERY == 0:
                tally.check(dist, device, total, block_label)
            if on_step is not None:
                on_step(step, total, loss.item(), 100.0 * tally.correct[-1].item() / seen)
        tally.check(dist, device, total, block_label)
        if on_epoch is not None:
            loss_sum, correct = tally.sums()
            on_epoch({"step": step, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                      "seconds": time.perf_counter() - start, "generator": generator.get_state(),
                      "momentum": momentum_of(opts)})
    seconds = time.perf_counter() - start
    dist.sync_buffers(*blocks, *heads)
    loss_sum, correct = tally.sums()
    sums = dist.all_sum([*loss_sum, *correct, seen], device)
    seen = sums[-1]
    return [StageStats(sums[j] / seen, 100.0 * sums[n + j] / seen, int(seen), seconds) for j in range(n)]
