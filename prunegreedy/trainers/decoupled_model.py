"""`--trainer decoupled` on a whole network (model.arch): every stage trains at once against its own head.

As the plan's decoupled trainer (Belilovsky et al., ICML 2020): each stage reads the previous
stage's output, detached, and learns from its own aux head (the last stage from the model's own
classifier with model.last_head own). Pruning cuts every stage at once, after training or at
compress.at of the common schedule: in forward order, each through the dependency graph with its
head and the next stage (compress.graph.prune_stage, compress.scope), each scored on its own
head's loss, as the greedy trainer cuts it. Rows per stage, every head votes in the ensemble,
and the checkpoint's spec replays every cut, so load_network and export read it as any model run.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.graph import prune_stage, replay as replay_cut
from ..compress.network import head_for, head_settings
from ..compress.prune import accumulate_gradients
from ..config import Config
from ..nn.net import GreedyNet
from ..nn.spec import StageSpec
from ..nn.split import stage_shapes
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_ratio
from .decoupled import decoupled_epochs, train_at_once
from .modules import build_fresh, cut_fresh


def decoupled_model(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    n = len(plan)
    epochs = decoupled_epochs(cfg, n)
    staged, own, spec = cut_fresh(cfg, build_fresh(cfg, s), s)
    stages = staged.stages
    torch.manual_seed(cfg.run.seed * 1000)  # head init and random importance
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)  # batches and augmentation

    def inputs() -> list[tuple[int, ...]]:  # every stage's input shape as the stages now are
        return [tuple(s.ds.image_shape), *stage_shapes(stages, s.ds.image_shape)[:-1]]

    outs = stage_shapes(stages, s.ds.image_shape)
    for j in range(n):
        if own and j == n - 1:
            staged.heads.append(staged.tail)
        else:
            spec["heads"][str(j)] = head_settings(cfg.model.head or "pooled", cfg.model.head_pool)
            staged.heads.append(head_for(spec["heads"][str(j)], outs[j], s.ds.num_classes))
    heads = staged.heads
    staged.saved(own).to(s.device, memory_format=s.memory_format)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]
    spec["pruning"] = [None] * n
    recs = [PhaseRecorder(s, j, stages[:j], shape, ratios[j], "stage") for j, shape in enumerate(inputs())]
    c = cfg.compress

    def cut(records: dict | None = None) -> dict:
        """Cut every stage in forward order (or replay `records`), record `pruned` rows."""
        if not any(ratios):
            return {}
        before, t0, removed = [o[0] for o in stage_shapes(stages, s.ds.image_shape)], time.perf_counter(), {}
        for j in range(n):
            shape, nxt = inputs()[j], stages[j + 1] if j + 1 < n else None
            if records is not None:
                if records.get(str(j)):
                    replay_cut(stages[j], heads[j], nxt, shape, records[str(j)])
                    spec["pruning"][j] = records[str(j)]
                continue
            ctx = StageContext(j, nn.Sequential(*stages[:j]), stages[j], heads[j], shape, s.ds, s.norm, cfg.train,
                               s.device, gen, ratios[j], s.dist)
            record = prune_stage(stages[j], heads[j], nxt, shape, ratios[j], c.importance, c.round_to, c.scope,
                                 gradients=lambda ctx=ctx: accumulate_gradients(ctx, ctx.block, ctx.head,
                                                                                c.taylor_batches),
                                 agree=s.dist.broadcast)
            if record.cuts:
                spec["pruning"][j] = removed[str(j)] = record.as_dict()
        s.dist.check_same([*stages, *heads], "pruned weights")
        seconds = time.perf_counter() - t0
        for rec, shape in zip(recs, inputs()):  # after a cut a stage may read fewer channels
            rec.block_input = shape
        if records is None:
            for j, rec in enumerate(recs):
                rec("pruned", stages[j], heads[j], seconds, width_before=before[j], removed=removed.get(str(j)))
        return removed

    def replay(outcome: dict) -> None:
        cut(outcome["removed"])
        s.record.add_rows(outcome["rows"])
        for j, r in outcome["removed"].items():
            s.record.removed(int(j) + 1, r)

    train_at_once(cfg, stages, heads, recs, ratios, s, gen, epochs, cut, replay, "stage")
    for m in [*stages, *heads]:
        freeze(m)
    s.record.save_stage(n, staged.saved(own), spec, s.stage_probs[n - 1])
    return GreedyNet(stages, heads)
