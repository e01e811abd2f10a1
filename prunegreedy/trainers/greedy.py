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
from ..compress.graph import coupled_groups, kept_filters
from ..config import Config
from ..measure.size import output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..records import SENSITIVITY_FILE
from ..train.loop import Chain, step_at, steps_of, train
from ..train.modes import freeze
from .common import PhaseRecorder, Session, stage_ratio


def greedy(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    """Train the plan stage by stage, each on the frozen, possibly pruned, stages before it.
    Finished stages of a resumed run are loaded, not trained again."""
    net = GreedyNet()
    done = s.record.meta.stages_done
    if done:
        net, probs = s.record.load_stage(done)
        net = freeze(net.to(s.device, memory_format=s.memory_format))
        s.stage_probs.update(enumerate(probs))
    in_shape = output_shape(nn.Sequential(*net.blocks), s.ds.image_shape)
    for j in range(len(net.blocks), len(plan)):
        block, head = _stage(cfg, j, plan, in_shape, net, s)
        net.blocks.append(freeze(block))
        net.heads.append(freeze(head))
        s.record.save_stage(j + 1, net, s.spec(net, cfg.model.plan), s.stage_probs[j])
        in_shape = output_shape(block, in_shape)
    return net


def _stage(cfg: Config, j: int, plan: list[StageSpec], in_shape: tuple[int, int, int], net: GreedyNet,
           s: Session) -> tuple[nn.Module, nn.Module]:
    """Build stage j's block and head from the plan, then train and compress it."""
    stage = plan[j]
    torch.manual_seed(cfg.run.seed * 1000 + j)  # weight init and random importance
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + j)  # batches and augmentation
    block, = s.to_device(make_block(in_shape[0], stage))
    head, = s.to_device(make_head(stage.width, stage, s.ds.num_classes, output_shape(block, in_shape)[1:]))
    return train_stage(cfg, j, len(plan), block, head, list(net.blocks), in_shape, s, gen)


def train_stage(cfg: Config, j: int, n: int, block: nn.Module, head: nn.Module, prefix_blocks: list[nn.Module],
                in_shape: tuple[int, ...], s: Session, gen: torch.Generator, next_block: nn.Module | None = None,
                graph: bool = False) -> tuple[nn.Module, nn.Module]:
    """Train stage j of n on the frozen prefix, run the compression hook, record every phase;
    return its block and head. `graph`: the block is any module, cut through the dependency graph
    into `next_block`'s input (compress.graph); otherwise a paper block."""
    prefix = freeze(nn.Sequential(*prefix_blocks))
    ratio = stage_ratio(cfg, j, n)
    rec = PhaseRecorder(s, j, prefix_blocks, in_shape, ratio)
    epochs = cfg.stage_value(cfg.train.epochs, 1.0, j, n)
    hook = get_hook(cfg.compress.hook)
    ctx = StageContext(j, prefix, block, head, in_shape, s.ds, s.norm, cfg.train, s.device, gen, ratio, s.dist,
                       graph=graph, next_block=next_block)
    inside = cfg.compress.at < 1 and ratio > 0  # cut part-way through the schedule (check: hook.cut exists)
    modules = {"block": block, "head": head}  # what a loop checkpoint holds (and a teacher, once there is one)
    chain = Chain([(block, head)], prefix)
    total = steps_of(epochs, s.ds.num_train, cfg.train.batch_size)
    width0 = output_shape(block, in_shape)[0]
    alive = list(range(width0))  # the original index of every filter still there
    # Several cuts of any module: each group's original width, and every cut so far, in order.
    several = graph and inside and cfg.compress.cuts > 1
    originals = {g.root: g.width for g in coupled_groups(block, head, next_block, in_shape, cfg.compress.scope)} \
        if several else None
    graph_cuts: list[dict] = []

    def cut_to(cut_ratio: float, removed: list[int] | None = None) -> list[int]:
        """Cut the block to kept_filters(original width, cut_ratio) (or exactly `removed`); keep the
        original indices of everything cut so far in run.json; distill from the uncut block after."""
        if cfg.compress.distill > 0 and "teacher_block" not in modules:
            modules["teacher_block"], modules["teacher_head"] = teacher = teacher_of(block, head)
            chain.loss = distill_loss(teacher, cfg.compress, cfg.train.label_smoothing)
        if removed is None:
            keep = kept_filters(width0, cut_ratio, cfg.compress.round_to)
            now = cut_ratio if len(alive) == width0 else 1 - keep / len(alive)  # of the filters still there
            removed = hook.cut(replace(ctx, ratio=cut_ratio, widths=originals) if several
                               else replace(ctx, ratio=now), cfg.compress, rec)
        else:
            replay_cut(ctx, removed)
        if isinstance(removed, list) and cfg.compress.cuts > 1:  # a paper block's filter indices
            cut = set(removed)
            alive[:] = [a for i, a in enumerate(alive) if i not in cut]
            s.record.removed(j + 1, sorted(set(range(width0)) - set(alive)))
        elif several and removed:  # pruning records: one that replays every cut in order
            graph_cuts.extend(removed["cuts"])
            s.record.removed(j + 1, {"cuts": list(graph_cuts)})
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
    return block, head
