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

import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.prune import accumulate_gradients, prune_network
from ..errors import ConfigError
from ..measure.size import output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..train.loop import NonFiniteLoss, StageStats, train_stage
from ..train.modes import freeze
from .common import check, stage_ratio
from .greedy import GreedyRun, _StageRecorder


def total_epochs(cfg, n_stages: int) -> float:
    """train.total_epochs, or the greedy budget: the sum of the per-stage epochs."""
    if cfg.train.total_epochs is not None:
        return cfg.train.total_epochs
    return sum(cfg.stage_value(cfg.train.epochs, 1.0, j, n_stages) for j in range(n_stages))


def build_plan_net(plan: list[StageSpec], input_shape: tuple[int, int, int],
                   num_classes: int) -> tuple[list[nn.Module], nn.Module]:
    """Every block of the plan at its plan width, and the last stage's head."""
    blocks, shape = [], input_shape
    for stage in plan:
        blocks.append(make_block(shape[0], stage))
        shape = output_shape(blocks[-1], shape)
    return blocks, make_head(shape[0], plan[-1], num_classes, shape[1:])


class EndToEndRun(GreedyRun):
    stage_label = "end-to-end, blocks 1 -"

    @classmethod
    def validate(cls, cfg, plan) -> None:
        if cfg.compress.at < 1 and cfg.compress.hook != "none":
            raise ConfigError(f"--trainer end-to-end prunes once, after training (prune-after-training); "
                              f"compress.at {cfg.compress.at:g} is for the greedy and decoupled trainers")

    def run(self) -> dict:
        cfg = self.cfg
        plan = check(cfg)
        n = len(plan)
        if not self.rows:
            self.run_dir.write_config(cfg.to_dict())
        self.meta.update(status="running", trainer=cfg.train.trainer)
        self.run_dir.write_meta(self.meta)
        start = time.perf_counter()
        torch.manual_seed(cfg.run.seed * 1000)
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000)
        blocks, head = build_plan_net(plan, self.ds.image_shape, self.ds.num_classes)
        body = nn.Sequential(*blocks).to(self.device, memory_format=self.memory_format)
        head = head.to(self.device, memory_format=self.memory_format)
        empty = nn.Sequential()  # no frozen prefix: gradients flow through every block
        ratios = [stage_ratio(cfg, j, n) for j in range(n)]
        rec = _StageRecorder(self, n - 1, [], self.ds.image_shape, max(ratios))
        epochs = total_epochs(cfg, n)
        loop_state = self._continue(n, body, head, "")
        try:
            stats = self._train(empty, body, head, epochs, cfg.train.lr, cfg.train.schedule, gen, rec, "train",
                                on_epoch=lambda st: self.run_dir.save_partial(n, body, head, st),
                                resume=loop_state)
            rec("trained", body, head, stats.seconds, stats=stats, epochs=epochs)
            if cfg.compress.hook == "prune" and any(ratios):
                self._prune_after_training(empty, blocks, body, head, ratios, gen, rec)
        except NonFiniteLoss as e:
            self._fail(f"end-to-end training stopped: {e}")
        self.net = GreedyNet([freeze(b) for b in body], [freeze(head)])
        self.run_dir.save_checkpoint(self.net, self.spec(), n, self.stage_probs[n - 1])
        self.meta.update(stages_done=n, seconds_done=round(time.perf_counter() - start, 2))
        self.run_dir.clear_partial(n)
        return self._finish(plan, time.perf_counter() - start)

    def _train(self, prefix, body, head, epochs, lr, schedule, gen, rec, desc, **kw) -> StageStats:
        return train_stage(prefix, body, head, self.ds, self.norm, self.cfg.train, epochs, lr, schedule,
                                 self.device, gen, on_step=rec.progress(desc), dist=self.dist, **kw)

    def _prune_after_training(self, empty, blocks, body, head, ratios, gen, rec) -> None:
        cfg = self.cfg.compress
        before = blocks[-1].conv.out_channels
        ctx = StageContext(len(blocks) - 1, empty, body, head, self.ds.image_shape, self.ds, self.norm,
                                    self.cfg.train, self.device, gen, max(ratios), self.dist)
        t0 = time.perf_counter()
        removed = prune_network(
            blocks, head, self.ds.image_shape, ratios, cfg.importance, cfg.round_to,
            gradients=lambda: accumulate_gradients(ctx, body, head, cfg.taylor_batches),
            agree=self.dist.broadcast)
        self.dist.check_same([body, head], "pruned weights")
        rec("pruned", body, head, time.perf_counter() - t0, width_before=before, removed=removed)
        if cfg.finetune() > 0:
            stats = self._train(empty, body, head, cfg.finetune(), cfg.finetune_lr, cfg.finetune_schedule,
                                gen, rec, "fine-tune")
            rec("finetuned", body, head, stats.seconds, stats=stats, epochs=cfg.finetune())

    def _ensemble(self, plan) -> None:
        return None  # one head: there is no ensemble of stage heads
