"""`--trainer end-to-end` on a whole network (model.arch): the baseline greedy training is compared with.

The whole model trains jointly by backpropagation into its own classifier (or, with
model.last_head aux, an aux head on the last stage), for train.total_epochs (default: the greedy
run's total). With `compress.hook: prune` it becomes prune-after-training: once trained, every
stage is cut through the dependency graph (compress.graph.prune_stage, compress.scope) in
forward order, each traced with the stages after it (so its output cut reaches the next stage's
input), scored on the whole network's loss; then the whole network is fine-tuned for
compress.finetune_epochs (trainers.endtoend.train_jointly, as for a plan).

Records follow the plan's end-to-end layout: one "stage" n (the whole network) with rows
`trained`, `pruned`, `finetuned`, and checkpoints/stage-n whose spec replays every stage's cut,
so export, eval, bench and load_network treat it like a greedy model run.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..compress.graph import prune_stage
from ..compress.network import downstream, head_for, head_settings
from ..config import Config
from ..nn.net import GreedyNet
from ..nn.spec import StageSpec
from ..nn.split import stage_shapes
from ..train.modes import freeze
from .common import Session, stage_ratio
from .endtoend import train_jointly
from .modules import build_fresh, cut_fresh


def end_to_end_model(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    n = len(plan)
    staged, own, spec = cut_fresh(cfg, build_fresh(cfg, s), s)
    stages = staged.stages
    torch.manual_seed(cfg.run.seed * 1000)  # an aux head's init and random importance
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)  # batches and augmentation
    if own:
        head = staged.tail
    else:
        spec["heads"][str(n - 1)] = head_settings(cfg.model.head or "pooled", cfg.model.head_pool)
        head = head_for(spec["heads"][str(n - 1)], stage_shapes(stages, s.ds.image_shape)[-1], s.ds.num_classes)
    staged.heads = [nn.Identity() for _ in range(n - 1)] + [head]  # no head of their own: end-to-end
    staged.saved(own).to(s.device, memory_format=s.memory_format)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]
    spec["pruning"] = [None] * n
    c = cfg.compress

    def cut(gradients: Callable[[], None]) -> dict:
        """Every stage in forward order: stage j's input is what stage j-1's cut left."""
        removed = {}
        for j in range(n):
            shape = stage_shapes(stages[:j], s.ds.image_shape)[-1] if j else tuple(s.ds.image_shape)
            reader = head if j == n - 1 else downstream(stages, j)  # the stages after it, next among them
            record = prune_stage(stages[j], reader, None, shape, ratios[j], c.importance, c.round_to, c.scope,
                                 gradients=gradients, agree=s.dist.broadcast)
            if record.cuts:
                spec["pruning"][j] = removed[str(j)] = record.as_dict()
        return removed

    train_jointly(cfg, n, nn.Sequential(*stages), head, ratios, s, gen, cut, "end-to-end, stages 1 -")
    for m in [*stages, *staged.heads]:
        freeze(m)
    s.record.save_stage(n, staged.saved(own), spec, s.stage_probs[n - 1])
    return GreedyNet(stages, staged.heads)
