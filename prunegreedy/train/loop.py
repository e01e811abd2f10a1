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
    # On a GPU the fused kernel updates every parameter in one launch; the CPU keeps the reference loop.
    fused = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused or None)


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


class Tally:
    """Running sums of the loss and of correct predictions, and the first non-finite loss, for n
    trained modules, kept on the training device. Reading a device value makes the host wait for
    the device; once per step that wait costs a GPU a large share of a small step, so the host
    reads these only every CHECK_EVERY steps and at the end of an epoch. Sums are float64 and
    int64, exactly what adding `loss.item() * n` on the host gave."""

    CHECK_EVERY = 50

    def __init__(self, n: int, device: torch.device, loss_sum=None, correct=None):
        self.loss = torch.tensor(loss_sum if loss_sum is not None else [0.0] * n, dtype=torch.float64,
                                 device=device).reshape(n)
        self.correct = torch.tensor(correct if correct is not None else [0] * n, dtype=torch.int64,
                                    device=device).reshape(n)
        self.bad_step = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros(n, device=device)

    def add(self, j: int, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach()
        self.loss[j] += loss.double() * len(y)
        self.correct[j] += (logits.argmax(1) == y).sum()
        fresh = ~torch.isfinite(loss) & (self.bad_step[j] < 0)
        self.bad_step[j] = torch.where(fresh, step, self.bad_step[j])
        self.bad_loss[j] = torch.where(fresh, loss.float(), self.bad_loss[j])

    def check(self, dist: Dist, device: torch.device, total: int, label: Callable[[int], str]) -> None:
        """NonFiniteLoss naming the first module, step and value, on every rank at once, if any went bad."""
        ok = bool((self.bad_step < 0).all())
        if dist.all_true(ok, device):
            return
        if ok:
            raise NonFiniteLoss("loss became non-finite on another process")
        j = int((self.bad_step >= 0).nonzero()[0])
        raise NonFiniteLoss(f"{label(j)}loss became {self.bad_loss[j].item()} at step {int(self.bad_step[j])} "
                            f"of {total}")

    def sums(self) -> tuple[list[float], list[int]]:
        return self.loss.tolist(), self.correct.tolist()


StepCallback = Callable[[int, int, float, float], None]  # (step, total_steps, loss, acc%)


def steps_of(epochs: float, num_train: int, batch_size: int) -> int:
    """Optimizer steps of a schedule of `epochs` epochs (fractions allowed, at least one)."""
    return max(1, round(epochs * math.ceil(num_train / batch_size)))


def cut_step_of(at: float, total: int) -> int:
    """The step before which a cut at fraction `at` of a `total`-step schedule is made."""
    return min(total - 1, round(at * total))


def _slots(opts: list[torch.optim.Optimizer]) -> list[tuple[torch.optim.Optimizer, torch.Tensor]]:
    """(optimizer, parameter) pairs, optimizer by optimizer, in parameter order: how momentum is saved."""
    return [(o, p) for o in opts for g in o.param_groups for p in g["params"]]


def momentum_of(opts: list[torch.optim.Optimizer]) -> list[torch.Tensor | None]:
    """Every parameter's momentum buffer (None: not yet), in the order of _slots."""
    return [o.state[p].get("momentum_buffer") for o, p in _slots(opts)]


def restore_loop(state: dict | None, generator: torch.Generator, opts: list[torch.optim.Optimizer],
                 device: torch.device, n: int) -> tuple[int, int, float, Tally]:
    """(step, images seen, seconds, tally) to start a loop from: zeros, or a saved end-of-epoch state
    with the batch generator and every optimizer's momentum put back."""
    if state is None:
        return 0, 0, 0.0, Tally(n, device)
    generator.set_state(state["generator"])
    for (o, p), buf in zip(_slots(opts), state["momentum"]):
        if buf is not None:
            o.state[p]["momentum_buffer"] = buf.to(p.device).clone()
    return state["step"], state["seen"], state["seconds"], Tally(n, device, state["loss_sum"], state["correct"])


def train_stage(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
                cfg: TrainConfig, epochs: float, lr: float, schedule: str, device: torch.device,
                generator: torch.Generator, on_step: StepCallback | None = None,
                on_epoch: Callable[[dict], None] | None = None, resume: dict | None = None,
                dist: Dist = SINGLE, cut_at: float = 1.0, on_cut: Callable[[], None] | None = None) -> StageStats:
    """Train block + head against the auxiliary loss; `prefix` (blocks 1..j-1) stays frozen.

    `on_epoch` receives the loop state after every epoch (step, running sums, generator state,
    momentum buffers); passing such a state back as `resume` (with block and head restored)
    continues exactly where it was taken. Under torchrun (`dist`), block + head are wrapped in
    DistributedDataParallel and each rank trains on its share of every global batch.
    `on_cut` runs once, before the step at fraction `cut_at` of the schedule: it may prune block
    and head in place, so the optimizer (momentum included) is built anew for what is left.
    """
    freeze(prefix)
    block.train()
    head.train()
    model = dist.wrap(nn.Sequential(block, head), device)
    opt = make_optimizer([block, head], lr, cfg)  # built here: pruning replaces parameter objects
    amp = autocast_dtype(cfg.amp, device)
    total = steps_of(epochs, ds.num_train, cfg.batch_size)
    cut_step = cut_step_of(cut_at, total) if on_cut is not None else None
    step, seen, elapsed, tally = restore_loop(resume, generator, [opt], device, 1)
    start = time.perf_counter() - elapsed
    while step < total:
        for xb, yb in ds.train_batches(cfg.batch_size, norm, generator, shard=dist.shard):
            if step >= total:
                break
            if step == cut_step:
                on_cut()
                model = dist.wrap(nn.Sequential(block, head), device)
                opt = make_optimizer([block, head], lr, cfg)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, schedule, cfg)
            with autocast(device, amp):
                with torch.no_grad():
                    feats = prefix(xb)
                logits = model(feats)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tally.add(0, step, loss, logits, yb)
            seen += len(yb)
            step += 1
            if step % Tally.CHECK_EVERY == 0:  # every rank stops together, at the same step
                tally.check(dist, device, total, lambda j: "")
            if on_step is not None:
                on_step(step, total, loss.item(), 100.0 * tally.correct[0].item() / seen)
        tally.check(dist, device, total, lambda j: "")  # never checkpoint a non-finite state
        if on_epoch is not None:
            (loss_sum,), (correct,) = tally.sums()
            on_epoch({"step": step, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                      "seconds": time.perf_counter() - start, "generator": generator.get_state(),
                      "momentum": momentum_of([opt])})
    seconds = time.perf_counter() - start
    dist.sync_buffers(block, head)
    (loss_sum,), (correct,) = tally.sums()
    loss_sum, correct, seen = dist.all_sum([loss_sum, correct, seen], device)  # every rank's share
    return StageStats(loss_sum / seen, 100.0 * correct / seen, int(seen), seconds)
