"""`--trainer decoupled`: every stage of the network trains at once, each against its own head.

Decoupled Greedy Learning (Belilovsky, Eickenberg, Oyallon, ICML 2020) on the same network, heads
and records as the greedy trainer: each stage reads the previous stage's output, detached;
`stages.csv` has rows per stage with the usual phases, every head votes in the ensemble, and the
run resumes from the end-of-epoch checkpoint of every stage, head and optimizer. Pruning cuts
every stage, in forward order (cut_every_stage), either after training (then fine-tunes, all
stages again at once) or at `compress.at` of the common schedule.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.gradients import accumulate_gradients
from ..compress.network import cut_stage, replay_stage
from ..config import Config, as_list, per_stage
from ..errors import ConfigError
from ..measure.size import output_shape
from ..nn.network import Network
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


def validate(cfg: Config, net: Network) -> None:
    decoupled_epochs(cfg, len(net.stages))
    if cfg.compress.hook not in ("none", "prune"):
        raise ConfigError(f"--trainer decoupled cuts every stage at once itself; compress.hook must be none "
                          f"or prune, not '{cfg.compress.hook}'")
    c = cfg.compress
    # reconstruct None, the default: only greedy cuts refit
    if c.cuts > 1 or max(as_list(c.distill)) > 0 or c.rewind or c.reconstruct:
        raise ConfigError(f"compress.cuts {c.cuts}, compress.distill {per_stage(c.distill)}, compress.rewind and "
                          f"compress.reconstruct are for the greedy trainer; --trainer decoupled cuts once "
                          f"(compress.cuts 1, compress.distill 0, compress.rewind false, compress.reconstruct 0)")


def build_all(s: Session, heads: bool = True) -> tuple[list[nn.Module], list[nn.Module]]:
    """Every stage's module (made ones made now, on the widths before any cut) and, with `heads`,
    every stage's head (else the last stage's alone, the others nn.Identity)."""
    net, shape, out = s.net, tuple(s.ds.image_shape), []
    for j in range(len(net.stages)):
        block = net.module(j, shape[0])
        shape = output_shape(block, shape)
        last = j == len(net.stages) - 1
        out.append(s.new_head(j, shape) if heads or last else nn.Identity())
    blocks = s.to_device(*net.modules_of())
    return blocks, out


def cut_every_stage(cfg: Config, s: Session, heads: list[nn.Module], ratios: list[float],
                    gradients: Callable[[int], None], records: dict | None = None) -> dict:
    """Cut every stage in forward order, each with its head and into the next stage's input, scored
    on the network as the cuts before it left it (or replay `records`); {stage index: record}."""
    net, c, removed = s.net, cfg.compress, {}
    for j in range(len(net.stages)):
        shape = net.shapes(s.ds.image_shape)[j]
        if records is not None:
            if records.get(str(j)):
                replay_stage(net, j, heads[j], shape, records[str(j)])
            continue
        record = cut_stage(net, j, heads[j], shape, ratios[j], c.importance, c.round_to, c.scope,
                           gradients=lambda j=j: gradients(j), agree=s.dist.broadcast)
        if record.cuts:
            removed[str(j)] = record.as_dict()
    s.dist.check_same([*net.modules_of(), *heads], "pruned weights")
    return records if records is not None else removed


def decoupled(cfg: Config, s: Session) -> list[nn.Module]:
    s.start(cfg)
    n = len(s.net.stages)
    epochs = decoupled_epochs(cfg, n)
    torch.manual_seed(cfg.run.seed * 1000)  # made stages, heads and random importance
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000)  # batches and augmentation
    blocks, heads = build_all(s)
    ratios = [stage_ratio(cfg, j, n) for j in range(n)]
    recs = [PhaseRecorder(s, j, blocks[:j], shape, ratios[j], "stage")
            for j, shape in enumerate(s.net.shapes(s.ds.image_shape)[:n])]

    def gradients(j: int) -> None:  # Taylor importance: each stage's gradient from its own head's loss
        ctx = StageContext(j, nn.Sequential(*blocks[:j]), blocks[j], heads[j], recs[j].block_input, s.ds, s.norm,
                           cfg.train, s.device, gen, ratios[j], s.dist)
        accumulate_gradients(ctx, blocks[j], heads[j], cfg.compress.taylor_batches)

    def cut(records: dict | None = None) -> dict:
        """Cut every stage (or replay `records`), record `pruned` rows."""
        if not any(ratios):
            return {}
        before, t0 = [shape[0] for shape in s.net.shapes(s.ds.image_shape)[1:]], time.perf_counter()
        removed = cut_every_stage(cfg, s, heads, ratios, gradients, records)
        seconds = time.perf_counter() - t0
        for rec, shape in zip(recs, s.net.shapes(s.ds.image_shape)):  # after a cut a stage may read fewer channels
            rec.block_input = shape
        if records is None:
            for j, rec in enumerate(recs):
                rec("pruned", blocks[j], heads[j], seconds, width_before=before[j], removed=removed.get(str(j)))
        return removed

    def replay(outcome: dict) -> None:
        cut(outcome["removed"])
        s.record.add_rows(outcome["rows"])
        for j, r in outcome["removed"].items():
            s.record.removed(int(j) + 1, r)

    removed = train_at_once(cfg, blocks, heads, recs, ratios, s, gen, epochs, cut, replay)
    for m in [*blocks, *heads]:
        freeze(m)
    s.save_stage(n, heads, [removed.get(str(j)) for j in range(n)])
    return heads


def train_at_once(cfg: Config, blocks: list[nn.Module], heads: list[nn.Module], recs: list[PhaseRecorder],
                  ratios: list[float], s: Session, gen: torch.Generator, epochs: float,
                  cut: Callable[[], dict], replay: Callable[[dict], None]) -> dict:
    """Train every (stage, head) pair in one schedule, cut them all by `cut()` at compress.at or
    after training (`replay(outcome)` repeats a recorded cut on resume), then fine-tune them all.
    Returns what the cut removed."""
    n = len(blocks)

    def cut_event() -> dict:
        first = len(s.record.rows)
        return {"removed": cut(), "rows": s.record.rows[first:]}

    inside = cfg.compress.at < 1 and any(ratios)
    events = {step_at(cfg.compress.at, steps_of(epochs, s.ds.num_train, cfg.train.batch_size)): cut_event} \
        if inside else {}
    modules = {"block": nn.ModuleList(blocks), "head": nn.ModuleList(heads)}
    state = s.restore(n, modules, "", replay)
    chain = Chain(list(zip(blocks, heads)), label=lambda j: f"stage {j + 1}'s ")
    result = train(chain, s.ds, s.norm, cfg.train, epochs, cfg.train.lr, cfg.train.schedule, s.device, gen,
                   events=events, on_step=recs[-1].progress("train"),
                   on_epoch=lambda st: s.record.save_partial(n, modules, st), resume=state, dist=s.dist)
    for j in range(n):
        recs[j]("trained", blocks[j], heads[j], result.stats[j].seconds, stats=result.stats[j], epochs=epochs)
    removed = next((o["removed"] for o in result.events.values()), {}) if inside else cut()
    if removed and cfg.compress.finetune() > 0:
        ft = train(chain, s.ds, s.norm, cfg.train, cfg.compress.finetune(), cfg.compress.finetune_lr,
                   cfg.compress.finetune_schedule, s.device, gen, on_step=recs[-1].progress("fine-tune"),
                   dist=s.dist).stats
        for j in range(n):
            recs[j]("finetuned", blocks[j], heads[j], ft[j].seconds, stats=ft[j], epochs=cfg.compress.finetune())
    return removed
