"""`--trainer decoupled`: every block of the plan trains at once, each against its own head.

Decoupled Greedy Learning (Belilovsky, Eickenberg, Oyallon, ICML 2020) on the same plan, heads
and records as the greedy trainer: `stages.csv` has rows per block (stage = block index) with
the usual phases, every head votes in the ensemble, and the run resumes from the end-of-epoch
checkpoint of every block, head and optimizer. Pruning cuts every block at once, either after
training (then fine-tunes, all blocks again at once) or at `compress.at` of the common schedule.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..compress.context import StageContext
from ..compress.prune import accumulate_gradients, prune_network
from ..measure.size import output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..train.decoupled import train_decoupled
from ..train.loop import NonFiniteLoss
from ..train.modes import freeze
from .common import check, stage_ratio
from .greedy import GreedyRun, _StageRecorder


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


class DecoupledRun(GreedyRun):
    stage_label = "block"

    @classmethod
    def validate(cls, cfg: Config, plan: list[StageSpec]) -> None:
        decoupled_epochs(cfg, len(plan))
        if cfg.compress.hook not in ("none", "prune"):
            raise ConfigError(f"--trainer decoupled cuts every block at once itself; compress.hook must be none "
                              f"or prune, not '{cfg.compress.hook}'")

    def run(self) -> dict:
        cfg = self.cfg
        plan = check(cfg)
        n = len(plan)
        epochs = decoupled_epochs(cfg, n)
        if not self.rows:
            self.run_dir.write_config(cfg.to_dict())
        self.meta.update(status="running", trainer=cfg.train.trainer)
        self.run_dir.write_meta(self.meta)
        start = time.perf_counter() - float(self.meta.get("seconds_done", 0.0))
        torch.manual_seed(cfg.run.seed * 1000)
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000)
        blocks, heads, shapes = build_stages(plan, self.ds.image_shape, self.ds.num_classes)
        blocks = [b.to(self.device, memory_format=self.memory_format) for b in blocks]
        heads = [h.to(self.device, memory_format=self.memory_format) for h in heads]
        ratios = [stage_ratio(cfg, j, n) for j in range(n)]
        recs = [_StageRecorder(self, j, blocks[:j], shapes[j], ratios[j]) for j in range(n)]
        inside = cfg.compress.at < 1 and any(ratios)
        cut: dict = {}

        def on_cut() -> None:
            first = len(self.rows)
            cut.update(removed=self._cut(blocks, heads, shapes, ratios, gen, recs), rows=self.rows[first:])

        pair = (nn.ModuleList(blocks), nn.ModuleList(heads))
        state = self._continue(n, *pair, "", replay=lambda c: self._replay(blocks, heads, shapes, ratios, recs, c, cut))
        try:
            stats = train_decoupled(blocks, heads, self.ds, self.norm, cfg.train, epochs, cfg.train.lr,
                                    cfg.train.schedule, self.device, gen, on_step=recs[-1].progress("train"),
                                    on_epoch=lambda st: self.run_dir.save_partial(n, *pair, {**st, "cut": cut or None}),
                                    resume=state, dist=self.dist, cut_at=cfg.compress.at,
                                    on_cut=on_cut if inside else None)
            for j in range(n):
                recs[j]("trained", blocks[j], heads[j], stats[j].seconds, stats=stats[j], epochs=epochs)
            removed = cut.get("removed") if inside else self._cut(blocks, heads, shapes, ratios, gen, recs)
            if removed and cfg.compress.finetune() > 0:
                ft = train_decoupled(blocks, heads, self.ds, self.norm, cfg.train, cfg.compress.finetune(),
                                     cfg.compress.finetune_lr, cfg.compress.finetune_schedule, self.device, gen,
                                     on_step=recs[-1].progress("fine-tune"), dist=self.dist)
                for j in range(n):
                    recs[j]("finetuned", blocks[j], heads[j], ft[j].seconds, stats=ft[j],
                            epochs=cfg.compress.finetune())
        except NonFiniteLoss as e:
            self._fail(f"decoupled training stopped: {e}")
        self.net = GreedyNet([freeze(b) for b in blocks], [freeze(h) for h in heads])
        self.run_dir.save_checkpoint(self.net, self.spec(), n, self.stage_probs[n - 1])
        self.meta.update(stages_done=n, seconds_done=round(time.perf_counter() - start, 2))
        self.run_dir.clear_partial(n)
        return self._finish(plan, time.perf_counter() - start)

    def _cut(self, blocks, heads, shapes, ratios, gen, recs) -> dict[int, list[int]]:
        """Cut every block's filters at once (each scored with its own head), record `pruned` rows."""
        cfg = self.cfg.compress
        if not any(ratios):
            return {}
        before = [b.conv.out_channels for b in blocks]
        t0 = time.perf_counter()

        def gradients() -> None:  # Taylor importance: each block's gradient from its own head's loss
            for j, (block, head) in enumerate(zip(blocks, heads)):
                ctx = StageContext(j, nn.Sequential(*blocks[:j]), block, head, shapes[j], self.ds, self.norm,
                                   self.cfg.train, self.device, gen, ratios[j], self.dist)
                accumulate_gradients(ctx, block, head, cfg.taylor_batches)

        removed = prune_network(blocks, None, shapes[0], ratios, cfg.importance, cfg.round_to, gradients=gradients,
                                agree=self.dist.broadcast, heads=dict(enumerate(heads)))
        self.dist.check_same([*blocks, *heads], "pruned weights")
        seconds = time.perf_counter() - t0
        self._reshape(blocks, recs)
        for j, rec in enumerate(recs):
            rec("pruned", blocks[j], heads[j], seconds, width_before=before[j], removed=removed.get(j, []))
        return removed

    def _reshape(self, blocks, recs) -> None:
        """After a cut every block but the first reads fewer channels: tell the recorders."""
        for j, rec in enumerate(recs):
            rec.block_input = output_shape(nn.Sequential(*blocks[:j]), self.ds.image_shape)

    def _replay(self, blocks, heads, shapes, ratios, recs, saved: dict, cut: dict) -> None:
        """Repeat the cut a resumed run had made inside the schedule, and its `pruned` rows."""
        cfg = self.cfg.compress
        replay = {int(j): r for j, r in saved["removed"].items()}
        prune_network(blocks, None, shapes[0], ratios, cfg.importance, cfg.round_to, heads=dict(enumerate(heads)),
                      replay=replay)
        self._reshape(blocks, recs)
        self._restore_cut_records(saved, replay, cut)
