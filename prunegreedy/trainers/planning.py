"""What a run will build and cut, measured before any training: the plan of `prunegreedy plan`.

The stages are built as the greedy trainer builds them (same seeds, same heads, freshly
initialised) and cut as its hook cuts them (compress.network.cut_stage), in memory, on untrained weights: which filters a
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
from ..compress.graph import GroupInfo, kept_width, stage_groups
from ..compress.network import cut_stage, next_of
from ..config import Config
from ..errors import ConfigError
from ..measure.size import count_macs, count_params, output_shape
from ..nn.network import OWN, Network, declares_costs, from_config, network_name
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


def run_ratios(cfg: Config, net: Network, image_shape: tuple[int, int, int], num_classes: int = 10,
               network: nn.Module | None = None) -> tuple[list[float], dict | None]:
    """The ratio each stage is cut at, and for a budget what the rule can know before training:
    its target and the one ratio that, applied to every stage alike, meets it. For a network
    whose stages declare no costs that ratio is the run's (see model_budget)."""
    budget = budget_of(cfg.compress)
    n = len(net.stages)
    if budget is None:
        return [stage_ratio(cfg, j, n) for j in range(n)], None
    if not declares_costs(cfg.model):
        return model_budget(cfg, n, num_classes, image_shape, network)
    model, round_to = CostModel.of([st.spec for st in net.stages], image_shape), cfg.compress.round_to
    unpruned = model.unpruned(budget.kind)
    target = budget.target(unpruned)
    uniform = rest_ratio(model, budget.kind, target, [], round_to) or 0.0
    short = round(uniform, 6)  # a readable ratio where it keeps the same widths
    if widths_at(model.plan_widths, short, round_to) == widths_at(model.plan_widths, uniform, round_to):
        uniform = short
    return [uniform] * n, {"kind": budget.kind, "text": budget.text, "target": target,
                           "unpruned": unpruned, "uniform_ratio": uniform}


def model_budget(cfg: Config, n: int, num_classes: int, image_shape: tuple[int, int, int],
                 network: nn.Module | None) -> tuple[list[float], dict]:
    """A budget on a network whose stages declare no costs: the smallest ratio (to 4 decimals)
    that, applied to every stage alike, brings the backbone within the target, by bisection on the
    untrained network cut as the hook cuts it. The per-stage rule needs every stage's cost as a
    function of its widths (compress.budget), so every stage gets this one ratio."""
    budget = budget_of(cfg.compress)
    cost = functools.partial(_model_cost, cfg, num_classes, image_shape, network, budget.kind)
    unpruned = cost(0.0)
    target = budget.target(unpruned)
    lo, hi = 0.0, 0.99
    least = cost(hi)
    if least > target:
        unit = "MACs" if budget.kind == "macs" else "parameters"
        raise ConfigError(f"{budget.option} {budget.text} ({target:,} {unit}) cannot be met: model "
                          f"{network_name(cfg.model)} cut at ratio {hi:g} (scope {cfg.compress.scope}) still costs "
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
    """The backbone's MACs or parameters with every stage cut at `ratio`, as the greedy trainer cuts them."""
    with torch.random.fork_rng(devices=[]):
        net = _fresh(cfg, num_classes, image_shape, network)
        shape: tuple[int, ...] = tuple(image_shape)
        for j in range(len(net.stages)):
            module = net.module(j, shape[0])
            if ratio > 0:
                cut_stage(net, j, net.head(j, output_shape(module, shape)), shape, ratio, PLAN_CRITERION,
                          cfg.compress.round_to, cfg.compress.scope)
            shape = output_shape(module, shape)
    backbone = nn.Sequential(*net.modules_of())
    return count_params(backbone) if kind == "params" else count_macs(backbone, tuple(image_shape))


def plan_stages(cfg: Config, num_classes: int, image_shape: tuple[int, int, int],
                network: nn.Module | None = None, ratios: list[float] | None = None) -> list[StagePlan]:
    """Every stage of the run, built and cut at `ratios` (default: the run's) in memory."""
    ratios = ratios if ratios is not None else run_ratios(cfg, check(cfg, network), image_shape, num_classes,
                                                          network)[0]
    with torch.random.fork_rng(devices=[]):
        stages = list(_stages(cfg, num_classes, image_shape, network, ratios))
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


def _groups(found: list[GroupInfo], ratio: float, round_to: int, name, also: str | None = None) -> list[GroupPlan]:
    """The groups a cut at `ratio` narrows; `name(part, name)` qualifies a member's name; `also`
    is a layer outside the trace whose input narrows with an output group (a made next stage)."""
    out = []
    for g in found:
        kept = kept_width(g.width, ratio, round_to, g.channel_groups)
        if kept < g.width:
            coupled = [name(m.part, m.name) + (" (in)" if m.dim == "in" else "") for m in g.members
                       if not (m.part == "block" and m.name == g.root)]
            reaches = g.reaches_next
            if also is not None and g.kind == "output":
                coupled, reaches = coupled + [also], True
            out.append(GroupPlan(name("block", g.root), g.kind, g.width, kept, coupled, reaches))
    return out


def _fresh(cfg: Config, num_classes: int, image_shape: tuple[int, int, int], network: nn.Module | None) -> Network:
    """The run's network as the session builds it, untrained."""
    torch.manual_seed(cfg.run.seed)  # as Session.start: a prebuilt model's initial weights
    return from_config(cfg.model, num_classes, image_shape[1], copy.deepcopy(network) if network is not None else None)


def _stages(cfg: Config, num_classes: int, image_shape: tuple[int, int, int], network: nn.Module | None,
            ratios: list[float]) -> Iterator[StagePlan]:
    """Every stage and head as the greedy trainer builds them, cut through the graph."""
    net = _fresh(cfg, num_classes, image_shape, network)
    shape: tuple[int, ...] = tuple(image_shape)
    names = {m: n for n, m in net.model.named_modules()}  # layers by their name in the network
    n = len(net.stages)
    for j, stage in enumerate(net.stages):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # as the greedy trainer: weight and head init
        module = net.module(j, shape[0])
        names.update({m: f"{stage.name}.{k}" if k else stage.name for k, m in module.named_modules() if m not in names})
        head = net.head(j, output_shape(module, shape))
        own = stage.spec.head == OWN
        nxt = next_of(net, j)
        before = _measure(module, head, shape)
        found, note = stage_groups(module, head, nxt, shape, cfg.compress.scope) if ratios[j] > 0 else ([], None)
        parts = {"block": module, "head": head, "next": nxt}

        def name(part: str, inner: str, parts=parts, j=j, own=own) -> str:
            m = parts[part].get_submodule(inner)
            return names.get(m) or f"heads.{j}.{inner}"
        made_next = j + 1 < n and nxt is None  # built later on the cut width: its input narrows too
        groups = _groups(found, ratios[j], cfg.compress.round_to, name,
                         f"{net.stages[j + 1].name} (in)" if made_next else None)
        if ratios[j] > 0:
            record = cut_stage(net, j, head, shape, ratios[j], PLAN_CRITERION, cfg.compress.round_to,
                               cfg.compress.scope)
            if record.parts and note is None:  # the whole trace cut wrongly: the cut fell back to the parts
                groups = [GroupPlan(c.root, c.kind, c.width, c.width - len(c.removed), [], False) for c in record.cuts]
                note = "traced part by part, only the channels inside each part cut: traced whole, it cuts wrongly"
        after = _measure(module, head, shape)
        spec = stage.spec
        kind = spec.block + "+psi" * spec.psi + "+pool" * spec.pool + " no-BN" * (not spec.bn) if stage.made else ""
        head_name = f"own ({', '.join(_called(net.tail))})" if own else \
            spec.head + (f" k={spec.k}" if "k" in getattr(type(head), "FIELDS", {}) else "")
        planned = _stage(j, _called(module) or [stage.name], kind, module, head_name, shape, ratios[j], before,
                         after, groups)
        planned.note = note
        yield planned
        shape = after[4]


def _called(module: nn.Module) -> list[str]:
    """The modules a traced stage calls, in order, each once (none for a made block)."""
    graph = getattr(module, "graph", None)
    return list(dict.fromkeys(str(n.target) for n in graph.nodes if n.op == "call_module")) if graph else []
