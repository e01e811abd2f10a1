"""Train one greedy stage (block j + head j on top of frozen blocks 1..j-1) and evaluate it.

Learning-rate schedules are pure functions of training progress t in [0, 1) within a stage, so
a stage can be any (fractional) number of epochs and milestones scale with it.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Dataset, Normalize
from .distributed import Dist
from .errors import ConfigError

SINGLE = Dist()  # one process: every distributed step is a no-op


def _step(t: float, cfg: TrainConfig) -> float:
    """Multiply by gamma at each milestone (fractions of the stage); the paper: / 5 at 15, 30, 45 of 50."""
    return cfg.gamma ** sum(t >= m for m in cfg.milestones)


def _linear(t: float, cfg: TrainConfig) -> float:
    """Linear decay to zero at the end of the stage."""
    return max(0.0, 1.0 - t)


def _cosine(t: float, cfg: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _constant(t: float, cfg: TrainConfig) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float, TrainConfig], float]] = {
    "step": _step, "linear": _linear, "cosine": _cosine, "constant": _constant,
}


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` of `total_steps`, with linear warm-up over cfg.warmup."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")
    t = step / max(1, total_steps)
    factor = SCHEDULES[schedule](t, cfg)
    if cfg.warmup > 0 and t < cfg.warmup:
        factor *= (step + 1) / (cfg.warmup * total_steps)
    return base_lr * factor


def _has_fast_cpu_bf16() -> bool:
    """bf16 autocast pays off only with native bf16 instructions; on plain AVX2 it is ~4x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and _has_fast_cpu_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def freeze(module: nn.Module) -> nn.Module:
    """Frozen prefix: no gradients, eval mode (BatchNorm running statistics do not move)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Eval mode inside, and afterwards every submodule's own mode back.

    Restoring with module.train(flag) would be wrong: a fresh nn.Sequential around frozen blocks
    is in train mode and would switch them (and their BN statistics) back to training.
    """
    subs = [m for mod in modules for m in mod.modules()]
    modes = [m.training for m in subs]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, mode in zip(subs, modes):
            m.training = mode


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


@torch.no_grad()
def evaluate(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
             batch_size: int, device: torch.device, amp: torch.dtype | None = None) -> tuple[float, torch.Tensor]:
    """Test accuracy (%) of head(block(prefix(x))) on the whole test split, and its softmax (on CPU)."""
    logits = []
    with eval_mode(prefix, block, head):
        for xb, _ in ds.eval_batches(batch_size, norm):
            with autocast(device, amp):
                logits.append(head(block(prefix(xb))).float().cpu())
    out = torch.cat(logits)
    return accuracy(out, ds.test_y), out.softmax(1)  # accuracy from logits: softmax can tie in float32


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of logits or probabilities."""
    return 100.0 * (scores.argmax(1) == labels.cpu()).sum().item() / len(labels)


def ensemble_accuracy(stage_probs: list[torch.Tensor], labels: torch.Tensor) -> float:
    """The paper's ensemble of all stage heads: softmaxes weighted by 2^j (j = 1..J)."""
    weights = torch.tensor([2.0 ** j for j in range(1, len(stage_probs) + 1)])
    mix = sum(w * p for w, p in zip(weights / weights.sum(), stage_probs))
    return accuracy(mix, labels)
