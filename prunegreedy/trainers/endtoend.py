"""The baselines greedy training is compared with, on the same stage plan and the same records.

`end-to-end`: every block of the plan trained jointly by backpropagation into the last stage's
head only (no auxiliary heads), same optimizer and schedule family, `train.total_epochs` epochs
(default: the greedy run's total, the sum of its per-stage epochs). With `compress.hook: prune`
it becomes prune-after-training: once trained, every block loses the same fraction of filters
as the greedy hook would cut (one shot, same importance criteria), then the whole network is
fine-tuned for `compress.finetune_epochs`.

Records follow the greedy layout with a single "stage" J (the whole network): rows `trained`,
`pruned`, `finetuned` in stages.csv, `checkpoints/stage-J`, so report, export and eval treat an
end-to-end run like a greedy one.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.prune import accumulate_gradients, prune_network
from ..config import Config
from ..errors import ConfigError
from ..measure.size import output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..train.loop import Chain, train
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_ratio


def total_epochs(cfg, n_stages: int) -> float:
    """train.total_epochs, or the greedy budget: the sum of the per-stage epochs."""
    if cfg.train.total_epochs is not None:
        return cfg.train.total_epochs
    return sum(cfg.stage_value(cfg.train.epochs, 1.0, j, n_stages) for j in range(n_stages))


def validate(cfg: Config, plan: list[StageSpec]) -> None:
    if cfg.compress.at < 1 and cfg.compress.hook != "none":
        raise ConfigError(f"--trainer end-to-end prunes once, after training (prune-after-training); "
                          f"compress.at {cfg.compress.at:g} is for the greedy and decoupled trainers")
    if cfg.compress.reconstruct:
        raise ConfigError(f"compress.reconstruct {cfg.compress.reconstruct} refits a greedy stage's layers after its "
                          f"cut; --trainer end-to-end takes compress.reconstruct 0")
    if cfg.compress.hook not in ("none", "prune"):
        raise ConfigError(f"--trainer end-to-end prunes every block at once after training itself; compress.hook "
                          f"must be none or prune, not '{cfg.compress.hook}'")


def build_plan_net(plan: list[StageSpec], input_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[list[nn.Module], nn.Module]:
    """Every block of the plan at its plan width, and the last stage's head."""
    blocks, shape = [], input_shape
    for stage in plan:
        blocks.append(make_block(shape[0], stage))
        shape = output_shape(blocks[-1], shape)
    return blocks, make_head(shape[0], plan[-1], num_classes, shape[1:])


def end_to_end(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    n = len(plan)
    torch.manual_seed(cfg.run.seed * 1000)
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)
    blocks, head = build_plan_net(plan, s.ds.image_shape, s.ds.num_classes)
    body, head = s.to_device(nn.Sequential(*blocks), head)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]
    c = cfg.compress

    def cut(gradients: Callable[[], None]) -> dict:
        return prune_network(blocks, head, s.ds.image_shape, ratios, c.importance, c.round_to, gradients=gradients,
                             agree=s.dist.broadcast)

    train_jointly(cfg, n, body, head, ratios, s, gen, cut, "end-to-end, blocks 1 -")
    net = GreedyNet([freeze(b) for b in body], [freeze(head)])
    s.record.save_stage(n, net, s.spec(net, cfg.model.plan), s.stage_probs[n - 1])
    return net


def train_jointly(cfg: Config, n: int, body: nn.Module, head: nn.Module, ratios: list[float], s: Session,
                  gen: torch.Generator, cut: Callable[[Callable[[], None]], dict], label: str) -> None:
    """Train body + head as one network, then (prune-after-training) `cut(gradients)` every part of
    it and fine-tune; every phase recorded as the one "stage" n, at the largest ratio of its parts."""
    chain = Chain([(body, head)])  # no frozen prefix: gradients flow through every block
    rec = PhaseRecorder(s, n - 1, [], s.ds.image_shape, max(ratios), label)
    epochs = total_epochs(cfg, n)
    modules = {"block": body, "head": head}
    state = s.restore(n, modules, "")
    stats = train(chain, s.ds, s.norm, cfg.train, epochs, cfg.train.lr, cfg.train.schedule, s.device, gen,
                  on_step=rec.progress("train"), on_epoch=lambda st: s.record.save_partial(n, modules, st),
                  resume=state, dist=s.dist).stats[0]
    rec("trained", body, head, stats.seconds, stats=stats, epochs=epochs)
    c = cfg.compress
    if c.hook == "prune" and any(ratios):  # prune-after-training
        before = output_shape(body, s.ds.image_shape)[0]
        ctx = StageContext(n - 1, nn.Sequential(), body, head, s.ds.image_shape, s.ds, s.norm, cfg.train, s.device,
                           gen, max(ratios), s.dist)
        t0 = time.perf_counter()
        removed = cut(lambda: accumulate_gradients(ctx, body, head, c.taylor_batches))
        s.dist.check_same([body, head], "pruned weights")
        rec("pruned", body, head, time.perf_counter() - t0, width_before=before, removed=removed)
        if c.finetune() > 0:
            stats = train(chain, s.ds, s.norm, cfg.train, c.finetune(), c.finetune_lr, c.finetune_schedule, s.device,
                          gen, on_step=rec.progress("fine-tune"), dist=s.dist).stats[0]
            rec("finetuned", body, head, stats.seconds, stats=stats, epochs=c.finetune())
