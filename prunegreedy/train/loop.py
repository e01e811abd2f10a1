"""Train one greedy stage: block j + head j on top of frozen blocks 1..j-1, against the head's loss."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.base import Dataset, Normalize
from .distributed import SINGLE, Dist
from .modes import autocast, autocast_dtype, freeze
from .schedules import lr_at


def make_optimizer(modules: list[nn.Module], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if (not cfg.wd_on_bn_bias and p.ndim <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


@dataclass
class StageStats:
    train_loss: float
    train_acc: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class NonFiniteLoss(RuntimeError):
    pass


StepCallback = Callable[[int, int, float, float], None]  # (step, total_steps, loss, acc%)


def train_stage(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
                cfg: TrainConfig, epochs: float, lr: float, schedule: str, device: torch.device,
                generator: torch.Generator, on_step: StepCallback | None = None,
                on_epoch: Callable[[dict], None] | None = None, resume: dict | None = None,
                dist: Dist = SINGLE) -> StageStats:
    """Train block + head against the auxiliary loss; `prefix` (blocks 1..j-1) stays frozen.

    `on_epoch` receives the loop state after every epoch (step, running sums, generator state,
    momentum buffers); passing such a state back as `resume` (with block and head restored)
    continues exactly where it was taken. Under torchrun (`dist`), block + head are wrapped in
    DistributedDataParallel and each rank trains on its share of every global batch.
    """
    freeze(prefix)
    block.train()
    head.train()
    model = dist.wrap(nn.Sequential(block, head), device)
    opt = make_optimizer([block, head], lr, cfg)  # built here: pruning replaces parameter objects
    params = [p for g in opt.param_groups for p in g["params"]]
    amp = autocast_dtype(cfg.amp, device)
    steps_per_epoch = math.ceil(ds.num_train / cfg.batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    step, loss_sum, correct, seen, elapsed = 0, 0.0, 0, 0, 0.0
    if resume is not None:
        step, loss_sum, correct, seen, elapsed = (resume[k] for k in ("step", "loss_sum", "correct", "seen", "seconds"))
        generator.set_state(resume["generator"])
        for p, buf in zip(params, resume["momentum"]):
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.to(p.device).clone()
    start = time.perf_counter() - elapsed
    while step < total:
        for xb, yb in ds.train_batches(cfg.batch_size, norm, generator, shard=dist.shard):
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, schedule, cfg)
            with autocast(device, amp):
                with torch.no_grad():
                    feats = prefix(xb)
                logits = model(feats)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            finite = bool(torch.isfinite(loss))
            if not dist.all_true(finite, device):  # every rank stops together
                value = loss.item() if not finite else "non-finite on another process"
                raise NonFiniteLoss(f"loss became {value} at step {step} of {total}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(yb)
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == yb).sum().item()
            seen += n
            step += 1
            if on_step is not None:
                on_step(step, total, loss.item(), 100.0 * correct / seen)
        if on_epoch is not None:
            on_epoch({"step": step, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                      "seconds": time.perf_counter() - start, "generator": generator.get_state(),
                      "momentum": [opt.state[p].get("momentum_buffer") for p in params]})
    seconds = time.perf_counter() - start
    dist.sync_buffers(block, head)
    loss_sum, correct, seen = dist.all_sum([loss_sum, correct, seen], device)  # every rank's share
    return StageStats(loss_sum / seen, 100.0 * correct / seen, int(seen), seconds)
