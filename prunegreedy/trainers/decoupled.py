"""`--trainer decoupled`: every block of the plan trains at once, each against its own head.

Decoupled Greedy Learning (Belilovsky, Eickenberg, Oyallon, ICML 2020) on the same plan, heads
and records as the greedy trainer: `stages.csv` has rows per block (stage = block index) with
the usual phases, every head votes in the ensemble, and the run resumes from the end-of-epoch
checkpoint of every block, head and optimizer. Pruning cuts every block at once, either after
training (then fine-tunes, all blocks again at once) or at `compress.at` of the common schedule.
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
from ..measure.size import block_widths, output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..train.loop import Chain, step_at, steps_of, train
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_ratio


def decoupled_epochs(cfg: Config, n_stages: int) -> float:
    """train.total_epochs, else the per-stage epochs that every block shares.

    All blocks run in one schedule, so per-stage epochs that differ ([4, 2, 3, 2]) cannot be
    honoured: such a schedule needs train.total_epochs to say how long the common one is.
    """
    if cfg.train.total_epochs is not None:
        return cfg.train.total_epochs
    per_stage = {cfg.stage_value(cfg.train.epochs, 1.0, j, n_stages) for j in range(n_stages)}
    if len(per_stage) > 1:
        raise ConfigError(f"--trainer decoupled trains every block at once, in one schedule, so per-stage "
                          f"epochs {cfg.train.epochs} cannot run; set train.total_epochs (the epochs every "
                          f"block gets) or one value for train.epochs")
    return per_stage.pop()


def validate(cfg: Config, plan: list[StageSpec]) -> None:
    decoupled_epochs(cfg, len(plan))
    if cfg.compress.hook not in ("none", "prune"):
        raise ConfigError(f"--trainer decoupled cuts every block at once itself; compress.hook must be none "
                          f"or prune, not '{cfg.compress.hook}'")
    c = cfg.compress
    if c.cuts > 1 or c.distill > 0 or c.rewind or c.reconstruct:  # None, the default: only greedy cuts refit
        raise ConfigError(f"compress.cuts {c.cuts}, compress.distill {c.distill:g}, compress.rewind and "
                          f"compress.reconstruct are for the greedy trainer; --trainer decoupled cuts once "
                          f"(compress.cuts 1, compress.distill 0, compress.rewind false, compress.reconstruct 0)")


def build_stages(plan: list[StageSpec], input_shape: tuple[int, int, int],
                 num_classes: int) -> tuple[list[nn.Module], list[nn.Module], list[tuple[int, int, int]]]:
    """Every block of the plan with its own head, and every block's input shape."""
    blocks, heads, shapes, shape = [], [], [], input_shape
    for stage in plan:
        shapes.append(shape)
        blocks.append(make_block(shape[0], stage))
        shape = output_shape(blocks[-1], shape)
        heads.append(make_head(shape[0], stage, num_classes, shape[1:]))
    return blocks, heads, shapes


def decoupled(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    n = len(plan)
    epochs = decoupled_epochs(cfg, n)
    torch.manual_seed(cfg.run.seed * 1000)
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)
    blocks, heads, shapes = build_stages(plan, s.ds.image_shape, s.ds.num_classes)
    blocks, heads = s.to_device(*blocks), s.to_device(*heads)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]
    recs = [PhaseRecorder(s, j, blocks[:j], shapes[j], ratios[j], "block") for j in range(n)]

    def cut(replay: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
        """Cut every block's filters at once (each scored with its own head), record `pruned` rows."""
        c = cfg.compress
        if not any(ratios):
            return {}
        before = block_widths(blocks, shapes[0])
        t0 = time.perf_counter()

        def gradients() -> None:  # Taylor importance: each block's gradient from its own head's loss
            for j, (block, head) in enumerate(zip(blocks, heads)):
                ctx = StageContext(j, nn.Sequential(*blocks[:j]), block, head, shapes[j], s.ds, s.norm, cfg.train,
                                   s.device, gen, ratios[j], s.dist)
                accumulate_gradients(ctx, block, head, c.taylor_batches)

        removed = prune_network(blocks, None, shapes[0], ratios, c.importance, c.round_to, gradients=gradients,
                                agree=s.dist.broadcast, heads=dict(enumerate(heads)), replay=replay)
        s.dist.check_same([*blocks, *heads], "pruned weights")
        seconds = time.perf_counter() - t0
        for j, rec in enumerate(recs):  # after a cut every block but the first reads fewer channels
            rec.block_input = output_shape(nn.Sequential(*blocks[:j]), s.ds.image_shape)
        if replay is None:
            for j, rec in enumerate(recs):
                rec("pruned", blocks[j], heads[j], seconds, width_before=before[j], removed=removed.get(j, []))
        return removed

    def replay(outcome: dict) -> None:
        removed = {int(j): r for j, r in outcome["removed"].items()}
        cut(replay=removed)
        s.record.add_rows(outcome["rows"])
        for j, r in removed.items():
            s.record.removed(j + 1, r)

    train_at_once(cfg, blocks, heads, recs, ratios, s, gen, epochs, cut, replay, "block")
    net = GreedyNet([freeze(b) for b in blocks], [freeze(h) for h in heads])
    s.record.save_stage(n, net, s.spec(net, cfg.model.plan), s.stage_probs[n - 1])
    return net


def train_at_once(cfg: Config, blocks: list[nn.Module], heads: list[nn.Module], recs: list[PhaseRecorder],
                  ratios: list[float], s: Session, gen: torch.Generator, epochs: float,
                  cut: Callable[[], dict], replay: Callable[[dict], None], label: str) -> None:
    """Train every (block, head) pair in one schedule, cut them all by `cut()` at compress.at or
    after training (`replay(outcome)` repeats a recorded cut on resume), then fine-tune them all."""
    n = len(blocks)

    def cut_event() -> dict:
        first = len(s.record.rows)
        return {"removed": cut(), "rows": s.record.rows[first:]}

    inside = cfg.compress.at < 1 and any(ratios)
    events = {step_at(cfg.compress.at, steps_of(epochs, s.ds.num_train, cfg.train.batch_size)): cut_event} \
        if inside else {}
    modules = {"block": nn.ModuleList(blocks), "head": nn.ModuleList(heads)}
    state = s.restore(n, modules, "", replay)
    chain = Chain(list(zip(blocks, heads)), label=lambda j: f"{label} {j + 1}'s ")
    result = train(chain, s.ds, s.norm, cfg.train, epochs, cfg.train.lr, cfg.train.schedule, s.device, gen,
                   events=events, on_step=recs[-1].progress("train"),
                   on_epoch=lambda st: s.record.save_partial(n, modules, st), resume=state, dist=s.dist)
    for j in range(n):
        recs[j]("trained", blocks[j], heads[j], result.stats[j].seconds, stats=result.stats[j], epochs=epochs)
    removed = any(o["removed"] for o in result.events.values()) if inside else cut()
    if removed and cfg.compress.finetune() > 0:
        ft = train(chain, s.ds, s.norm, cfg.train, cfg.compress.finetune(), cfg.compress.finetune_lr,
                   cfg.compress.finetune_schedule, s.device, gen, on_step=recs[-1].progress("fine-tune"),
                   dist=s.dist).stats
        for j in range(n):
            recs[j]("finetuned", blocks[j], heads[j], ft[j].seconds, stats=ft[j], epochs=cfg.compress.finetune())
