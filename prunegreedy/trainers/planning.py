"""What a run will build and cut, measured before any training: the plan of `prunegreedy plan`.

The stages are built as the greedy trainer builds them (same seeds, same heads, freshly
initialised) and cut as its hook cuts them (`prune_block` for a paper block, `prune_stage`
through the dependency graph for any module), in memory, on untrained weights: which filters a
criterion keeps depends on the weights, how many does not, so the widths, params and MACs are
the ones the run will record. Torch's global random state is restored afterwards, so planning
at the start of a run changes nothing the run draws.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..compress.budget import CostModel, budget_of, rest_ratio, widths_at
from ..compress.graph import GroupInfo, Member, coupled_groups, kept_width, prune_stage, stage_groups
from ..compress.network import head_for, head_settings
from ..compress.prune import prune_block
from ..config import Config
from ..errors import ConfigError
from ..measure.size import count_macs, count_params, output_shape
from ..nn.models import build_model
from ..nn.net import make_block, make_head
from ..nn.spec import StageSpec
from ..nn.split import check_feature_maps, split_stages
from .arch import model_split
from .common import check, stage_ratio

PLAN_CRITERION = "l1"  # any criterion cuts as many filters; l1 needs no gradients


@dataclass(frozen=True)
class GroupPlan:
    """One pruning group of a stage: its root layer, every layer coupled to it, its width."""
    root: str
    kind: str  # "internal" (inside the stage) or "output" (the stage's output channels)
    width: int
    kept: int
    coupled: list[str]  # qualified names; "(in)" marks a layer whose input channels shrink
    reaches_next: bool  # the cut also narrows the next stage's input


@dataclass
class StagePlan:
    """One stage before and after its cut; params and MACs as fvcore counts them (MACs, not FLOPs)."""
    stage: int
    first: str  # the first and last modules the stage calls, and how many it calls
    last: str
    modules: int
    block: str  # a paper block's type; empty for a model's stage
    layers: int  # Conv2d and Linear layers
    in_shape: str
    out_shape: str
    head: str
    head_params: int
    head_macs: int
    params: int
    macs: int
    ratio: float
    width_in: int
    width: int
    width_after: int
    params_after: int
    macs_after: int
    head_params_after: int
    head_macs_after: int
    params_backbone: int = 0  # stages 1..j as stage j trains, and after its cut (stages.csv's rows)
    macs_backbone: int = 0
    params_backbone_after: int = 0
    macs_backbone_after: int = 0
    groups: list[GroupPlan] = field(default_factory=list)
    note: str | None = None  # how the stage was traced where not whole (compress.graph.stage_groups)


def run_ratios(cfg: Config, plan: list[StageSpec], image_shape: tuple[int, int, int], num_classes: int = 10,
               network: nn.Module | None = None) -> tuple[list[float], dict | None]:
    """The ratio each stage is cut at, and for a budget what the rule can know before training:
    its target and the one ratio that, applied to every stage alike, meets it. For a whole
    network that ratio is the run's (see model_budget)."""
    budget = budget_of(cfg.compress)
    if budget is None:
        return [stage_ratio(cfg, j, len(plan)) for j in range(len(plan))], None
    if cfg.model.arch is not None:
        return model_budget(cfg, len(plan), num_classes, image_shape, network)
    model, round_to = CostModel.of(plan, image_shape), cfg.compress.round_to
    unpruned = model.unpruned(budget.kind)
    target = budget.target(unpruned)
    uniform = rest_ratio(model, budget.kind, target, [], round_to) or 0.0
    short = round(uniform, 6)  # a readable ratio where it keeps the same widths
    if widths_at(model.plan_widths, short, round_to) == widths_at(model.plan_widths, uniform, round_to):
        uniform = short
    return [uniform] * len(plan), {"kind": budget.kind, "text": budget.text, "target": target,
                                   "unpruned": unpruned, "uniform_ratio": uniform}


def model_budget(cfg: Config, n: int, num_classes: int, image_shape: tuple[int, int, int],
                 network: nn.Module | None) -> tuple[list[float], dict]:
    """A budget on a whole network: the smallest ratio (to 4 decimals) that, applied to every stage
    alike, brings the backbone within the target, by bisection on the untrained network cut as the
    hook cuts it. The paper plans' per-stage rule needs their cost model (compress.budget), which
    a whole network does not have, so every stage gets this one ratio."""
    budget = budget_of(cfg.compress)
    cost = functools.partial(_model_cost, cfg, num_classes, image_shape, network, budget.kind)
    unpruned = cost(0.0)
    target = budget.target(unpruned)
    lo, hi = 0.0, 0.99
    least = cost(hi)
    if least > target:
        unit = "MACs" if budget.kind == "macs" else "parameters"
        raise ConfigError(f"{budget.option} {budget.text} ({target:,} {unit}) cannot be met: model "
                          f"{cfg.model.arch} cut at ratio {hi:g} (scope {cfg.compress.scope}) still costs "
                          f"{least:,}; valid: at least {math.ceil(1e4 * least / unpruned) / 1e4:g}x")
    if unpruned > target:
        while hi - lo > 1e-4:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
        lo = math.ceil(hi * 1e4) / 1e4  # a readable ratio, still within the target (cost falls with it)
    return [lo] * n, {"kind": budget.kind, "text": budget.text, "target": target, "unpruned": unpruned,
                      "uniform_ratio": lo, "rule": "one ratio for every stage, from the untrained network",
                      "predicted": cost(lo)}


def _model_cost(cfg: Config, num_classes: int, image_shape: tuple[int, int, int], network: nn.Module | None,
                kind: str, ratio: float) -> int:
    """The backbone's MACs or parameters with every stage cut at `ratio` (as modules.greedy_model
    cuts them: each with its head and into the next stage)."""
    with torch.random.fork_rng(devices=[]):
        stages, tail, own, settings = _fresh_stages(cfg, num_classes, image_shape, network)
        shape: tuple[int, ...] = tuple(image_shape)
        for j, stage in enumerate(stages):
            last = j == len(stages) - 1
            head = tail if own and last else head_for(settings, output_shape(stage, shape), num_classes)
            if ratio > 0:
                prune_stage(stage, head, None if last else stages[j + 1], shape, ratio, PLAN_CRITERION,
                            cfg.compress.round_to, cfg.compress.scope)
            shape = output_shape(stage, shape)
    backbone = nn.Sequential(*stages)
    return count_params(backbone) if kind == "params" else count_macs(backbone, tuple(image_shape))


def plan_stages(cfg: Config, num_classes: int, image_shape: tuple[int, int, int],
                network: nn.Module | None = None, ratios: list[float] | None = None) -> list[StagePlan]:
    """Every stage of the run, built and cut at `ratios` (default: the run's) in memory."""
    plan = check(cfg)
    ratios = ratios if ratios is not None else run_ratios(cfg, plan, image_shape, num_classes, network)[0]
    with torch.random.fork_rng(devices=[]):
        built = _model_stages(cfg, num_classes, image_shape, network, ratios) if cfg.model.arch is not None \
            else _paper_stages(cfg, plan, num_classes, image_shape, ratios)
        stages = list(built)
    params = macs = 0
    for s in stages:
        s.params_backbone, s.macs_backbone = params + s.params, macs + s.macs
        params, macs = params + s.params_after, macs + s.macs_after
        s.params_backbone_after, s.macs_backbone_after = params, macs
    return stages


def _measure(block: nn.Module, head: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int, int, tuple]:
    out = output_shape(block, shape)
    return count_params(block), count_macs(block, shape), count_params(head), count_macs(head, out), out


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _stage(j: int, names: list[str], block_type: str, block: nn.Module, head_name: str, shape: tuple[int, ...],
           ratio: float, before: tuple, after: tuple, groups: list[GroupPlan]) -> StagePlan:
    p, m, hp, hm, out = before
    pa, ma, hpa, hma, out_after = after
    layers = sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in block.modules())
    return StagePlan(j + 1, names[0], names[-1], len(names), block_type, layers, _shape(shape), _shape(out),
                     head_name, hp, hm, p, m, ratio, shape[0], out[0], out_after[0], pa, ma, hpa, hma, groups=groups)


def _groups(found: list[GroupInfo], ratio: float, round_to: int, name) -> list[GroupPlan]:
    """The groups a cut at `ratio` narrows; `name(part, name)` qualifies a member's name."""
    out = []
    for g in found:
        kept = kept_width(g.width, ratio, round_to, g.channel_groups)
        if kept < g.width:
            coupled = [name(m.part, m.name) + (" (in)" if m.dim == "in" else "") for m in g.members
                       if not (m.part == "block" and m.name == g.root)]
            out.append(GroupPlan(name("block", g.root), g.kind, g.width, kept, coupled, g.reaches_next))
    return out


def _paper_stages(cfg: Config, plan: list[StageSpec], num_classes: int, image_shape: tuple[int, int, int],
                  ratios: list[float]) -> Iterator[StagePlan]:
    """The paper's blocks: conv filters cut with the BN and the head's input; the next block is
    built on the cut width, so its input is coupled too (by construction, not by trace)."""
    shape: tuple[int, ...] = tuple(image_shape)
    for j, spec in enumerate(plan):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # as greedy._stage: weight init
        block = make_block(shape[0], spec)
        head = make_head(spec.width, spec, num_classes, output_shape(block, shape)[1:])
        before = _measure(block, head, shape)
        last = j == len(plan) - 1
        found = [g if last else GroupInfo(g.root, (*g.members, Member("next", "conv", "in")), g.width, g.kind, True)
                 for g in (coupled_groups(block, head, None, shape, "internal") if ratios[j] > 0 else [])]
        parts = {"block": f"blocks.{j}", "head": f"heads.{j}", "next": f"blocks.{j + 1}"}
        groups = _groups(found, ratios[j], cfg.compress.round_to, lambda part, n: f"{parts[part]}.{n}")
        prune_block(block, head, shape, ratios[j], PLAN_CRITERION, cfg.compress.round_to)
        after = _measure(block, head, shape)
        kind = spec.block + "+psi" * spec.psi + "+pool" * spec.pool + " no-BN" * (not spec.bn)
        head_name = spec.head + (f" k={spec.k}" if "k" in getattr(type(head), "FIELDS", {}) else "")
        yield _stage(j, [f"blocks.{j}"], kind, block, head_name, shape, ratios[j], before, after, groups)
        shape = after[4]


def _fresh_stages(cfg: Config, num_classes: int, image_shape: tuple[int, int, int], network: nn.Module | None):
    """(stages, tail, whether the last stage keeps the tail, the aux heads' settings) of the run's
    network as modules.greedy_model builds it, untrained."""
    torch.manual_seed(cfg.run.seed)  # as modules._start: the model's initial weights
    model = copy.deepcopy(network) if network is not None else build_model(cfg.model.arch, num_classes,
                                                                           image_shape[1])
    split = model_split(cfg)
    stages, tail = split_stages(model, split)
    check_feature_maps(stages, split, tuple(image_shape), type(model).__name__, tail)
    own = cfg.model.last_head == "own" and tail is not None
    return stages, tail, own, head_settings(cfg.model.head or "pooled", cfg.model.head_pool)


def _model_stages(cfg: Config, num_classes: int, image_shape: tuple[int, int, int], network: nn.Module | None,
                  ratios: list[float]) -> Iterator[StagePlan]:
    """A whole network's stages and heads as modules.greedy_model builds them, cut through the graph."""
    stages, tail, own, settings = _fresh_stages(cfg, num_classes, image_shape, network)
    shape: tuple[int, ...] = tuple(image_shape)
    n = len(stages)
    for j, stage in enumerate(stages):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # as greedy_model: head init
        own_head = own and j == n - 1
        head = tail if own_head else head_for(settings, output_shape(stage, shape), num_classes)
        nxt = stages[j + 1] if j + 1 < n else None
        before = _measure(stage, head, shape)
        found, note = stage_groups(stage, head, nxt, shape, cfg.compress.scope) if ratios[j] > 0 else ([], None)
        groups = _groups(found, ratios[j], cfg.compress.round_to,
                         lambda part, name: name if part != "head" or own_head else f"heads.{j}.{name}")
        if ratios[j] > 0:
            record = prune_stage(stage, head, nxt, shape, ratios[j], PLAN_CRITERION, cfg.compress.round_to,
                                 cfg.compress.scope)
            if record.parts and note is None:  # the whole trace cut wrongly: the cut fell back to the parts
                groups = [GroupPlan(c.root, c.kind, c.width, c.width - len(c.removed), [], False) for c in record.cuts]
                note = "traced part by part, only the channels inside each part cut: traced whole, it cuts wrongly"
        after = _measure(stage, head, shape)
        names = _called(stage)
        head_name = f"own ({', '.join(_called(tail))})" if own_head else settings["type"]
        planned = _stage(j, names, "", stage, head_name, shape, ratios[j], before, after, groups)
        planned.note = note
        yield planned
        shape = after[4]


def _called(module: nn.Module) -> list[str]:
    """The modules a traced stage calls, in order, each once."""
    return list(dict.fromkeys(str(n.target) for n in module.graph.nodes if n.op == "call_module"))

