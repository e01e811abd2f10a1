"""The greedy trainer. For each stage: train -> compression hook -> measure -> record -> checkpoint.

The next block's input width is read from the (possibly pruned) previous block, never from the
config, so a stage always grows on what the previous stage actually left behind.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.hooks import finetune, get_hook, replay_cut
from ..compress.inside import cut_plan, distill_loss, teacher_of
from ..compress.graph import coupled_groups
from ..compress.network import next_of
from ..config import Config
from ..measure.size import output_shape
from ..records import SENSITIVITY_FILE
from ..train.datainit import init_stage
from ..train.loop import Chain, step_at, steps_of, train
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_distill, stage_ratio


def greedy(cfg: Config, s: Session) -> list[nn.Module]:
    """Train the network stage by stage, each on the frozen, possibly pruned, stages before it;
    return every stage's head. Finished stages of a resumed run are loaded, not trained again."""
    heads = s.start(cfg)
    net, pruning = s.net, list(s.spec["pruning"])
    in_shape = net.shapes(s.ds.image_shape)[len(heads)]  # the input of the first stage to train
    for j in range(len(heads), len(net.stages)):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # weight init and random importance
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + j)  # batches and augmentation
        block, = s.to_device(net.module(j, in_shape[0]))
        init_stage(block)
        head = train_stage(cfg, j, s.new_head(j, output_shape(block, in_shape)), in_shape, s, gen)
        heads.append(freeze(head))
        freeze(block)
        pruning.append(s.record.meta.removed_filters.get(str(j + 1)))
        s.save_stage(j + 1, heads, pruning)
        in_shape = output_shape(block, in_shape)
    return heads


def train_stage(cfg: Config, j: int, head: nn.Module, in_shape: tuple[int, ...], s: Session,
                gen: torch.Generator) -> nn.Module:
    """Train stage j of the session's network on the frozen stages before it, run the compression
    hook, record every phase; return its head."""
    net, n = s.net, len(s.net.stages)
    block, prefix_blocks = net.stages[j].module, net.modules_of(j)
    prefix = freeze(nn.Sequential(*prefix_blocks))
    ratio, distill = stage_ratio(cfg, j, n), stage_distill(cfg, j, n)
    rec = PhaseRecorder(s, j, prefix_blocks, in_shape, ratio)
    epochs = cfg.stage_value(cfg.train.epochs, 1.0, j, n)
    hook = get_hook(cfg.compress.hook)
    ctx = StageContext(j, prefix, block, head, in_shape, s.ds, s.norm, cfg.train, s.device, gen, ratio, s.dist, net)
    inside = cfg.compress.at < 1 and ratio > 0  # cut part-way through the schedule (check: hook.cut exists)
    modules = {"block": block, "head": head}  # what a loop checkpoint holds (and a teacher, once there is one)
    chain = Chain([(block, head)], prefix)
    total = steps_of(epochs, s.ds.num_train, cfg.train.batch_size)
    # Several cuts: each group's original width, and every cut so far, in order.
    several = inside and cfg.compress.cuts > 1
    originals = {g.root: g.width for g in coupled_groups(block, head, next_of(net, j), in_shape, cfg.compress.scope)} \
        if several else None
    cuts: list[dict] = []

    def cut_to(cut_ratio: float, removed: dict | None = None) -> dict | None:
        """Cut the block to kept_filters(original width, cut_ratio) (or exactly `removed`), keep
        every cut so far in run.json as one record; distill from the uncut block after."""
        if distill > 0 and "teacher_block" not in modules:
            modules["teacher_block"], modules["teacher_head"] = teacher = teacher_of(block, head)
            chain.loss = distill_loss(teacher, distill, cfg.compress.distill_temperature, cfg.train.label_smoothing)
        if removed is None:
            removed = hook.cut(replace(ctx, ratio=cut_ratio, widths=originals), cfg.compress, rec)
        else:
            replay_cut(ctx, removed)
        if several and removed:  # one record that replays every cut in order
            cuts.extend(removed["cuts"])
            s.record.removed(j + 1, {"cuts": list(cuts)})
        return removed

    def event(cut_ratio: float):
        def cut() -> dict:  # what the cut removed and recorded: replayed if the stage is resumed
            first = len(s.record.rows)
            return {"removed": cut_to(cut_ratio), "rows": s.record.rows[first:]}
        return cut
    events = {step_at(f, total): event(r) for f, r in cut_plan(cfg.compress.at, cfg.compress.cuts, ratio)} \
        if inside else {}

    def replay(outcome: dict) -> None:
        """Repeat a recorded cut (the same filters) and its `pruned` row on a resumed stage."""
        cut_to(ratio, outcome["removed"])
        s.record.add_rows(outcome["rows"])
        if cfg.compress.cuts == 1:
            s.record.removed(j + 1, outcome["removed"])

    state = s.restore(j + 1, modules, f"stage {j + 1}: ", replay)
    result = train(chain, s.ds, s.norm, cfg.train, epochs, cfg.train.lr, cfg.train.schedule,
                   s.device, gen, events=events, on_step=rec.progress("train"),
                   on_epoch=lambda st: s.record.save_partial(j + 1, modules, st), resume=state, dist=s.dist,
                   restart=max(events) if events and cfg.compress.rewind else None)
    stats = result.stats[0]
    if s.decisions is not None:  # sensitivity.csv; under a budget, this stage's ratio
        decision = s.decisions.after_training(ctx, ratio)
        ctx.ratio = rec.ratio = decision.ratio
        s.record.write_table(SENSITIVITY_FILE, s.decisions.rows)
        s.record.meta.sensitivity, s.record.meta.budget = s.decisions.sensitivity, s.decisions.budget
        for line in decision.lines:
            s.ui.log(line)
    rec("trained", block, head, stats.seconds, stats=stats, epochs=epochs)
    if not inside:
        block, head = hook.after(ctx, cfg.compress, rec)
    elif any(o["removed"] for o in result.events.values()):
        finetune(ctx, cfg.compress, rec)  # none by default: the schedule trained the pruned block
    return head
