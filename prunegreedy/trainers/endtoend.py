"""The baselines greedy training is compared with, on the same network and the same records.

`end-to-end`: every stage of the network trained jointly by backpropagation into the last stage's
head only (its own classifier, or an aux head), same optimizer and schedule family,
`train.total_epochs` epochs (default: the greedy run's total, the sum of its per-stage epochs).
With `compress.hook: prune` it becomes prune-after-training: once trained, every stage is cut in
forward order (decoupled.cut_every_stage, scored on the whole network's loss), then the whole
network is fine-tuned for `compress.finetune_epochs`.

Records follow the greedy layout with a single "stage" J (the whole network): rows `trained`,
`pruned`, `finetuned` in stages.csv, `checkpoints/stage-J`, so report, export and eval treat an
end-to-end run like a greedy one.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.gradients import accumulate_gradients
from ..config import Config
from ..errors import ConfigError
from ..nn.network import Network
from ..train.loop import Chain, train
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_ratio
from .decoupled import build_all, cut_every_stage


def total_epochs(cfg, n_stages: int) -> float:
    """train.total_epochs, or the greedy budget: the sum of the per-stage epochs."""
    if cfg.train.total_epochs is not None:
        return cfg.train.total_epochs
    return sum(cfg.stage_value(cfg.train.epochs, 1.0, j, n_stages) for j in range(n_stages))


def validate(cfg: Config, net: Network) -> None:
    if cfg.compress.at < 1 and cfg.compress.hook != "none":
        raise ConfigError(f"--trainer end-to-end prunes once, after training (prune-after-training); "
                          f"compress.at {cfg.compress.at:g} is for the greedy and decoupled trainers")
    if cfg.compress.reconstruct:
        raise ConfigError(f"compress.reconstruct {cfg.compress.reconstruct} refits a greedy stage's layers after its "
                          f"cut; --trainer end-to-end takes compress.reconstruct 0")
    if cfg.compress.hook not in ("none", "prune"):
        raise ConfigError(f"--trainer end-to-end prunes every stage after training itself; compress.hook "
                          f"must be none or prune, not '{cfg.compress.hook}'")


def end_to_end(cfg: Config, s: Session) -> list[nn.Module]:
    s.start(cfg)
    n = len(s.net.stages)
    torch.manual_seed(cfg.run.seed * 1000)  # made stages, the last head and random importance
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)  # batches and augmentation
    blocks, heads = build_all(s, heads=False)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]

    body, head, c = nn.Sequential(*blocks), heads[-1], cfg.compress
    chain = Chain([(body, head)])  # no frozen prefix: gradients flow through every stage
    # every phase recorded as the one "stage" n, at the largest ratio of its parts
    rec = PhaseRecorder(s, n - 1, [], s.ds.image_shape, max(ratios), "end-to-end, stages 1 -")
    epochs = total_epochs(cfg, n)
    modules = {"block": body, "head": head}
    state = s.restore(n, modules, "")
    stats = train(chain, s.ds, s.norm, cfg.train, epochs, cfg.train.lr, cfg.train.schedule, s.device, gen,
                  on_step=rec.progress("train"), on_epoch=lambda st: s.record.save_partial(n, modules, st),
                  resume=state, dist=s.dist).stats[0]
    rec("trained", body, head, stats.seconds, stats=stats, epochs=epochs)
    removed = {}
    if c.hook == "prune" and any(ratios):  # prune-after-training: every stage, then fine-tune them all
        before = s.net.shapes(s.ds.image_shape)[-1][0]
        ctx = StageContext(n - 1, nn.Sequential(), body, head, s.ds.image_shape, s.ds, s.norm, cfg.train, s.device,
                           gen, max(ratios), s.dist)
        t0 = time.perf_counter()
        removed = cut_every_stage(cfg, s, heads, ratios,
                                  lambda j: accumulate_gradients(ctx, body, head, c.taylor_batches))
        rec("pruned", body, head, time.perf_counter() - t0, width_before=before, removed=removed)
        if c.finetune() > 0:
            stats = train(chain, s.ds, s.norm, cfg.train, c.finetune(), c.finetune_lr, c.finetune_schedule, s.device,
                          gen, on_step=rec.progress("fine-tune"), dist=s.dist).stats[0]
            rec("finetuned", body, head, stats.seconds, stats=stats, epochs=c.finetune())
    for m in [*blocks, *heads]:
        freeze(m)
    s.save_stage(n, heads, [removed.get(str(j)) for j in range(n)])
    return heads
