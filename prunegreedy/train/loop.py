"""The one training loop: a schedule of optimizer steps over (block, head) pairs.

Every trainer is this loop with another `Chain`: greedy trains one block + head on a frozen
prefix's output, decoupled every block on its predecessor's detached output, end-to-end the
whole network as one "block". Anything that must happen at a given step (a cut inside the
schedule) is an event; the loop knows nothing about pruning.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.augment import Augment
from ..data.base import Dataset, Normalize
from . import stop
from .distributed import SINGLE, Dist
from .lookahead import Lookahead, decay_at
from .modes import autocast, autocast_dtype, freeze
from .optim import freeze_bn_scales, lr_scale, make_optimizer, set_rates
from .schedules import lr_at


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
Event = Callable[[], Any]  # run before a step; returns what it did (JSON-able), kept in the loop state


def steps_of(epochs: float, num_train: int, batch_size: int) -> int:
    """Optimizer steps of a schedule of `epochs` epochs (fractions allowed, at least one)."""
    return max(1, round(epochs * math.ceil(num_train / batch_size)))


def step_at(at: float, total: int) -> int:
    """The step before which something at fraction `at` of a `total`-step schedule happens."""
    return min(total - 1, round(at * total))


class _Pair(nn.Module):
    """Block + its head as one module: (features for the next pair, logits)."""

    def __init__(self, block: nn.Module, head: nn.Module):
        super().__init__()
        self.block, self.head = block, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.block(x)
        return h, self.head(h)


@dataclass
class Chain:
    """What one step trains: (block, head) pairs on the output of a frozen prefix (run under no_grad).

    Pair j's input is pair j-1's block output, detached, so no gradient crosses a pair; each pair
    has its own optimizer and is stepped as soon as its loss is known, so the autograd graph of
    one pair (not of the chain) is alive at any time."""
    pairs: list[tuple[nn.Module, nn.Module]]
    prefix: nn.Module = field(default_factory=nn.Sequential)
    label: Callable[[int], str] = lambda j: ""  # names pair j in a non-finite loss message
    # loss(j, pair j's input, its logits, labels); None: cross-entropy. An event may set it (distillation).
    loss: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def modules(self) -> list[nn.Module]:
        return [m for pair in self.pairs for m in pair]


@dataclass
class LoopState:
    """Where a loop stands: enough to continue it exactly (with the modules' weights restored).

    `events` holds what every event already run returned, by step, so a resumed run can repeat
    it (e.g. the same cut) before loading weights of the changed shapes."""
    step: int
    seen: int
    seconds: float
    loss_sum: list[float]
    correct: list[int]
    generator: torch.Tensor  # the batch generator as the current epoch started (epoch_step 0: as the next one starts)
    momentum: list[torch.Tensor | None]
    events: dict[str, Any] = field(default_factory=dict)
    epoch_step: int = 0  # steps already taken in the current epoch (0 at an epoch's end)
    slow: list[torch.Tensor] = field(default_factory=list)  # Lookahead's average (train.lookahead_every)

    def to_saved(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON scalars): how a record stores the state without knowing its fields."""
        tensors = {"generator": self.generator}
        tensors.update({f"momentum.{i}": m for i, m in enumerate(self.momentum) if m is not None})
        tensors.update({f"lookahead.{i}": t for i, t in enumerate(self.slow)})
        scalars = {k: getattr(self, k) for k in ("step", "seen", "seconds", "loss_sum", "correct", "events",
                                                 "epoch_step")}
        counts = {"momentum_count": len(self.momentum), **({"lookahead_count": len(self.slow)} if self.slow else {})}
        return tensors, {**scalars, **counts}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> "LoopState":
        n, k = scalars["momentum_count"], scalars.get("lookahead_count", 0)
        rest = {key: v for key, v in scalars.items() if key not in ("momentum_count", "lookahead_count")}
        return cls(**rest, generator=tensors["generator"], momentum=[tensors.get(f"momentum.{i}") for i in range(n)],
                   slow=[tensors[f"lookahead.{i}"] for i in range(k)])


@dataclass
class LoopResult:
    stats: list[StageStats]  # one per pair
    events: dict[str, Any]  # what every event returned, by step (those of a resumed loop included)


def _slots(opts: list[torch.optim.Optimizer]) -> list[tuple[torch.optim.Optimizer, torch.Tensor]]:
    """(optimizer, parameter) pairs, optimizer by optimizer, in parameter order: how momentum is saved."""
    return [(o, p) for o in opts for g in o.param_groups for p in g["params"]]


def train(chain: Chain, ds: Dataset, norm: Normalize, cfg: TrainConfig, epochs: float, lr: float, schedule: str,
          device: torch.device, generator: torch.Generator, *, events: dict[int, Event] | None = None,
          on_step: StepCallback | None = None, on_epoch: Callable[[LoopState], None] | None = None,
          resume: LoopState | None = None, dist: Dist = SINGLE, restart: int | None = None) -> LoopResult:
    """Train every pair of `chain` for `epochs` on one schedule.

    `events[s]` runs once, before step s; it may prune the modules in place, so the optimizers
    (momentum included) are built anew after it, and it never moves the batch stream (the
    generator is put back after it). `on_epoch` receives the loop state after every epoch, every
    `cfg.checkpoint_every` minutes within one, and when a stop is requested (SIGTERM, Ctrl-C: the
    loop then raises stop.Stopped after the current step); passing one back as `resume` (with the
    modules restored) continues exactly where it was taken. Under torchrun (`dist`) every pair is
    wrapped in DistributedDataParallel, each rank trains on its share of every global batch, and
    every rank stops and checkpoints at the same step. From step `restart` on, the learning-rate
    schedule (warm-up included) starts over across the steps that remain. With train.lookahead_every
    the pairs' weights are pulled to their moving average every so many steps and take it at the end
    (a checkpoint keeps the average, so a resumed loop goes on with it).
    """
    def build() -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
        models = [dist.wrap(_Pair(b, h), device) for b, h in chain.pairs]
        return models, [make_optimizer([b, h], lr, cfg) for b, h in chain.pairs]

    def state() -> LoopState:
        """The loop state, its sums taken over every rank (so any number of processes can resume it)."""
        loss_sum, correct = tally.sums()
        sums = dist.all_sum([*loss_sum, *correct, seen], device)
        return LoopState(step, int(sums[-1]), time.perf_counter() - start, sums[:n], [int(c) for c in sums[n:-1]],
                         epoch_start, [o.state[p].get("momentum_buffer") for o, p in _slots(opts)], dict(done),
                         epoch_step, [t.clone() for t in look.slow] if look is not None else [])

    freeze(chain.prefix)
    for m in chain.modules():
        m.train()
    if cfg.freeze_bn_scale:
        freeze_bn_scales(chain.modules())
    models, opts = build()
    look = Lookahead(chain.modules()) if cfg.lookahead_every else None
    aug, scale = Augment.of(cfg), lr_scale(cfg)
    amp = autocast_dtype(cfg.amp, device)
    n, events = len(chain.pairs), dict(events or {})
    total = steps_of(epochs, ds.num_train, cfg.batch_size)
    per_epoch = math.ceil(ds.num_train / cfg.batch_size)  # batches of a full epoch
    if resume is None:
        step, seen, elapsed, tally, done, epoch_step = 0, 0, 0.0, Tally(n, device), {}, 0
    else:
        generator.set_state(resume.generator)
        for (o, p), buf in zip(_slots(opts), resume.momentum):
            if buf is not None:
                o.state[p]["momentum_buffer"] = buf.to(p.device).clone()
        step, elapsed, epoch_step, done = resume.step, resume.seconds, resume.epoch_step, dict(resume.events)
        if look is not None and resume.slow:
            look.load(resume.slow)
        if dist.is_main:  # the saved sums are every rank's: one rank carries them on
            seen, tally = resume.seen, Tally(n, device, resume.loss_sum, resume.correct)
        else:
            seen, tally = 0, Tally(n, device)
    every = Tally.CHECK_EVERY if dist.enabled else 1  # a collective per step would cost the GPUs a sync
    due_every = cfg.checkpoint_every * 60 if cfg.checkpoint_every else None
    start = time.perf_counter() - elapsed
    last_save = time.perf_counter()
    with stop.loop():
        while step < total:
            epoch_start = generator.get_state()
            recipe = {} if aug is None else {"aug": aug, "epoch": (step - epoch_step) // per_epoch}
            for xb, yb in ds.train_batches(cfg.batch_size, norm, generator, shard=dist.shard, skip=epoch_step,
                                           **recipe):
                if step >= total:
                    break
                if step in events and str(step) not in done:
                    dist.sync_buffers(*chain.modules())  # each rank's last forward moved its own BN statistics
                    before = generator.get_state()
                    done[str(step)] = events[step]()
                    generator.set_state(before)
                    if cfg.freeze_bn_scale:  # a cut makes new Parameters, trainable again
                        freeze_bn_scales(chain.modules())
                    models, opts = build()
                    look = Lookahead(chain.modules()) if cfg.lookahead_every else None
                rate = lr_at(step, total, lr, schedule, cfg, restart) * scale
                with autocast(device, amp), torch.no_grad():
                    x = chain.prefix(xb)
                for j, (model, opt) in enumerate(zip(models, opts)):
                    set_rates(opt, rate, step / per_epoch)
                    with autocast(device, amp):
                        feats, logits = model(x)
                        loss = (F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                                if chain.loss is None else chain.loss(j, x, logits, yb))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # pair j's graph is freed here, before pair j+1 runs
                    opt.step()
                    x = feats.detach()
                    tally.add(j, step, loss, logits, yb)
                seen += len(yb)
                step += 1
                epoch_step += 1
                if look is not None and step % cfg.lookahead_every == 0:
                    look.update(decay_at(step, total, cfg.lookahead_decay))
                if step % Tally.CHECK_EVERY == 0:  # every rank stops together, at the same step
                    tally.check(dist, device, total, chain.label)
                if on_step is not None:
                    on_step(step, total, loss.item(), 100.0 * tally.correct[-1].item() / seen)
                if step % every == 0 and step < total:
                    due = due_every is not None and time.perf_counter() - last_save >= due_every
                    halt, due = dist.any_true([stop.requested() is not None, due], device)
                    if (halt or due) and on_epoch is not None:
                        tally.check(dist, device, total, chain.label)  # never checkpoint a non-finite state
                        on_epoch(state())
                        last_save = time.perf_counter()
                    if halt:
                        raise stop.Stopped(stop.requested() or signal.SIGTERM, f"step {step} of {total}")
            epoch_step = 0
            tally.check(dist, device, total, chain.label)  # never checkpoint a non-finite state
            if on_epoch is not None:
                epoch_start = generator.get_state()
                on_epoch(state())
                last_save = time.perf_counter()
            if dist.any_true([stop.requested() is not None], device)[0]:  # the epoch's checkpoint is complete
                raise stop.Stopped(stop.requested() or signal.SIGTERM, f"step {step} of {total}")
    if look is not None:
        look.finish()
    seconds = time.perf_counter() - start
    dist.sync_buffers(*chain.modules())
    loss_sum, correct = tally.sums()
    sums = dist.all_sum([*loss_sum, *correct, seen], device)
    seen = sums[-1]
    return LoopResult([StageStats(sums[j] / seen, 100.0 * sums[n + j] / seen, int(seen), seconds) for j in range(n)],
                      done)
