"""What a greedy run decides from held-out data: every stage's sensitivity
(sensitivity.csv) and, under a budget (`--target-macs`, `--target-params`), every stage's prune ratio.

Only runs that take such decisions hold out `data.holdout` training images (stratified, seeded
with run.seed); every other run trains on the whole training split, exactly as before. Test
accuracy is only reported, never used to choose anything.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..compress.budget import Budget, CostModel, budget_of, check_feasible, choose
from ..compress.context import StageContext
from ..compress.importance import NEEDS_GRADIENTS
from ..compress.gradients import accumulate_gradients
from ..compress.network import next_of
from ..compress.sensitivity import Gradients, measure
from ..measure.size import output_shape
from ..config import Config
from ..data.base import Dataset, Holdout
from ..errors import ConfigError, DataError
from ..nn.network import Network, declares_costs, from_config
from ..train.distributed import Dist



def takes_decisions(cfg: Config) -> bool:
    """Does this run choose anything from data (and so hold data.holdout images out of training)?
    A budget on a network whose stages declare no costs does not: its one ratio comes from the
    untrained network."""
    return cfg.compress.sensitivity or (budget_of(cfg.compress) is not None and declares_costs(cfg.model))


def check_config(cfg: Config, net: Network, image_shape: tuple[int, int, int]) -> None:
    """Budgets and sensitivity, checked with the rest of the config before any folder or data."""
    budget = budget_of(cfg.compress)  # a malformed budget is refused even when nothing else is set
    what = f"{budget.option} {budget.text}" if budget else "compress.sensitivity"
    if budget is not None:
        _check_budget_cut(cfg, what)
    if not takes_decisions(cfg):
        return
    if cfg.train.trainer != "greedy":
        raise ConfigError(f"{what} needs the greedy trainer (per-stage heads measure sensitivity), "
                          f"got --trainer {cfg.train.trainer}")
    if cfg.data.name == "imagenet":
        raise ConfigError(f"{what} holds out training images, which needs an in-memory dataset "
                          f"(cifar10, cifar10-sample, imagefolder); imagenet is streamed from disk")
    if cfg.compress.at < 1:
        raise ConfigError(f"{what} measures the trained, unpruned block, so it needs compress.at 1 "
                          f"(prune after training), got compress.at {cfg.compress.at:g}")
    if budget is not None and declares_costs(cfg.model):
        check_feasible(budget, CostModel.of([st.spec for st in net.stages], image_shape), cfg.compress.round_to,
                       net.name)


def _check_budget_cut(cfg: Config, what: str) -> None:
    if cfg.compress.hook != "prune":
        raise ConfigError(f"{what} prunes with compress.hook prune, got '{cfg.compress.hook}'")
    if cfg.compress.ratio != 0 or cfg.compress.ratios is not None:
        given = (f"compress.ratios {cfg.compress.ratios}" if cfg.compress.ratios is not None
                 else f"compress.ratio {cfg.compress.ratio:g}")
        raise ConfigError(f"{what} chooses every stage's prune ratio itself; drop {given} "
                          f"(--prune-ratio / --prune-ratios)")


def check_data(cfg: Config, ds) -> None:
    """The held-out slice must leave training images (checked once the data is read, before the folder)."""
    if takes_decisions(cfg) and cfg.data.holdout >= ds.num_train:
        raise DataError(f"data.holdout {cfg.data.holdout:,} is not smaller than the training set "
                        f"({ds.num_train:,} images of {ds.name}); valid: 1 to {ds.num_train - 1:,}")


def split(cfg: Config, ds: Dataset) -> tuple[Dataset, Holdout | None]:
    """(the images to train on, the held-out slice or None when the run takes no decision from data)."""
    if not takes_decisions(cfg):
        return ds, None
    check_data(cfg, ds)
    return ds.split_holdout(cfg.data.holdout, cfg.run.seed)


@dataclass
class StageDecision:
    """What the held-out data decided for one stage: its ratio, and the lines that say why."""
    ratio: float
    lines: list[str]


class Decisions:
    """Sensitivity rows and budgeted ratios of one greedy run. It computes; the trainer records:
    `rows` (sensitivity.csv), `sensitivity` and `budget` (their run.json sections)."""

    def __init__(self, cfg: Config, holdout: Holdout, ds: Dataset, device: torch.device, amp, dist: Dist):
        self.cfg, self.device, self.amp, self.dist = cfg, device, amp, dist
        self.num_classes = ds.num_classes
        self.holdout = holdout.to(device)
        # A fixed, seeded sample of the training images for the heads' BatchNorm recalibration.
        k = min(cfg.compress.sensitivity_bn_images, ds.num_train)
        pick = torch.randperm(ds.num_train, generator=torch.Generator().manual_seed(cfg.run.seed))[:k]
        self.calibration = ds.train_x[pick.sort().values.to(ds.train_x.device)] if k else None
        self.rows: list[dict] = []
        # a whole network's budget is met by one ratio found before training (planning.run_ratios)
        self.budget_rule: Budget | None = budget_of(cfg.compress) if declares_costs(cfg.model) else None
        self.sensitivity = {"holdout_images": len(holdout), "ratios": list(cfg.compress.sensitivity_ratios),
                            "bn_images": k, "seconds": {}}
        self.budget: dict | None = None
        if self.budget_rule is not None:
            self.model = CostModel.of([st.spec for st in from_config(cfg.model, ds.num_classes, ds.image_shape[1]).stages],
                                      ds.image_shape)
            unpruned = self.model.unpruned(self.budget_rule.kind)
            self.target = self.budget_rule.target(unpruned)
            self.budget = {"kind": self.budget_rule.kind, "request": self.budget_rule.text, "target": self.target,
                           "unpruned": unpruned, "stages": {}}

    def resume(self, done: int, rows: list[dict], sensitivity: dict | None, budget: dict | None) -> None:
        """Keep the rows and choices of the finished stages (the interrupted one is measured again)."""
        self.rows = [r for r in rows if r["stage"] <= done]
        if sensitivity is not None:
            self.sensitivity = {**sensitivity, "seconds": {k: v for k, v in sensitivity.get("seconds", {}).items()
                                                            if int(k) <= done}}
        if self.budget is not None and budget is not None:
            self.budget = {**budget, "stages": {k: v for k, v in budget.get("stages", {}).items() if int(k) <= done}}

    def after_training(self, ctx: StageContext, ratio: float) -> StageDecision:
        """Measure stage ctx.stage's sensitivity; its prune ratio: the budget rule's choice under a
        budget, else `ratio` (the configured one) unchanged."""
        c, stage = self.cfg.compress, ctx.stage + 1
        start = time.perf_counter()
        rows = measure(list(ctx.prefix), ctx.block, ctx.head, ctx.input_shape, c.sensitivity_ratios, c.importance,
                       c.round_to, self.holdout, ctx.norm, ctx.train_cfg.eval_batch_size, ctx.device, self.amp,
                       self._gradients(ctx), self.calibration, next_of(ctx.net, ctx.stage), c.scope)
        seconds = time.perf_counter() - start
        self.rows = [r for r in self.rows if r["stage"] != stage] + [{"stage": stage, **r} for r in rows]
        self.sensitivity["seconds"][str(stage)] = round(seconds, 3)
        accs = ", ".join(f"{r['ratio']:g}: {r['holdout_acc']:.1f}" for r in rows[1:])
        lines = [f"stage {stage} sensitivity: held-out acc {rows[0]['holdout_acc']:.2f}% unpruned; by ratio "
                 f"{accs} ({len(self.holdout):,} held-out images, {seconds:.1f}s)"]
        if self.budget_rule is None:
            return StageDecision(ratio, lines)
        kind = self.budget_rule.kind
        fixed = [shape[0] for shape in ctx.net.shapes(ctx.ds.image_shape)[1:stage]]  # kept widths of stages 1..j-1
        curves = [[(r["ratio"], r["holdout_acc"]) for r in self.rows if r["stage"] == s] for s in range(1, stage + 1)]
        choice = self.dist.broadcast(choose(self.model, kind, self.target, fixed, curves, c.round_to,
                                            100.0 / self.num_classes))
        self.budget["stages"][str(stage)] = {
            "ratio": choice.ratio, "width": choice.width, "rule": choice.rule,
            "rest_ratio": None if choice.rest_ratio is None else round(choice.rest_ratio, 4),
            "predicted_drop": choice.predicted_drop}
        n = output_shape(ctx.block, ctx.input_shape)[0]
        if choice.rest_ratio is not None:
            why = f"later blocks need ratio {choice.rest_ratio:.3f}"
            if choice.predicted_drop is not None:
                why += f", predicted held-out drop {choice.predicted_drop:.2f} points"
        else:
            cost = self.model.cost(kind, fixed + [choice.width])
            why = f"backbone {cost:,} of the target {self.target:,} {kind}"
        lines.append(f"stage {stage} budget ({choice.rule}): ratio {choice.ratio:g}, width {n}->{choice.width}; {why}")
        return StageDecision(choice.ratio, lines)

    def finish(self, final: int) -> str | None:
        """The budget's outcome (into `budget`): the chosen ratios, the final count, met or not; its line."""
        if self.budget is None:
            return None
        b, kind = self.budget, self.budget_rule.kind
        b.update(ratios=[b["stages"][k]["ratio"] for k in sorted(b["stages"], key=int)], final=final,
                 met=final <= self.target, of_target=round(final / self.target, 4))
        return (f"budget {kind} <= {self.target:,} ({self.budget_rule.text}): {final:,} "
                f"({100 * final / self.target:.1f} % of the target), {'met' if b['met'] else 'NOT met'}; "
                f"ratios {', '.join(f'{r:g}' for r in b['ratios'])}")

    def _gradients(self, ctx: StageContext) -> Gradients | None:
        """Taylor importance for a copy: the gradients of the batches the hook itself will draw."""
        if self.cfg.compress.importance not in NEEDS_GRADIENTS:
            return None
        state = ctx.generator.get_state()

        def fill(block: nn.Module, head: nn.Module) -> None:
            gen = torch.Generator()
            gen.set_state(state)
            accumulate_gradients(replace(ctx, block=block, head=head, generator=gen), block, head,
                                 self.cfg.compress.taylor_batches)
        return fill
