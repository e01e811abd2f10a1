"""Pruning to a budget: parse `--target-macs` / `--target-params`, the plan's cost model, the ratio rule.

A budget is the final backbone's MACs or parameters: an absolute count ("40M", "120k") or a
fraction of the unpruned plan ("0.25x"). The backbone's cost depends on every block's kept width:
block j costs  a_j * c_j * w_j + b_j * w_j,  where w_j is its kept width, c_j the previous block's
(the image's channels for block 1), a_j the conv's cost per (input channel x filter) (k*k times the
output map's pixels for MACs, x4 after psi) and b_j the per-filter rest (BatchNorm's two MACs per
output element, as fvcore counts an eval-mode BN; bias and BN parameters). This is exactly what
measure.size counts with fvcore (tests/test_budget.py checks it); ReLU, psi and max-pool cost 0.

The ratio rule (README, "Pruning to a budget"), at stage j once block j is trained, knowing the
kept widths of blocks 1..j-1, the held-out sensitivity of stages 1..j and the plan widths still to
build:
  - The candidates are the measured ratios of stage j, r = 0, and r*: the one ratio that, applied
    to block j and every later block alike, meets the target (its drop interpolated; the measured
    grid may hold no admissible ratio near it). For each candidate r, R(r) is the smallest ratio
    that, applied to every later block alike, brings the final cost within the target (bisection
    on the exact cost).
  - A candidate is admissible if the target stays reachable: with every later block at one filter
    (round_to) the cost is within the target, and with every later block unpruned it is at least
    (1 - TOLERANCE) of the target (cutting more would miss the target from below).
  - Its predicted drop is  d_j(r) + (stages left) * mean_s d_s(R(r)),  d_s the held-out accuracy
    drop of stage s against ratio (made monotone, and reaching chance accuracy at ratio 1), the
    mean taken over the stages measured so far (the later stages' curves are not known yet).
    The admissible candidate with the smallest predicted drop wins (ties: the smaller ratio). So a
    stage is cut more when its own drop is small next to what the cut saves later stages.
  - Should no candidate be admissible (block j's filters coarse next to the target), block j keeps
    the largest width with which one filter per later block still meets the target.
  - The last stage keeps the largest width (a multiple of round_to) whose final cost is within the
    target: never above it, and within one filter's cost of it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from ..config import CompressConfig
from ..errors import ConfigError
from ..nn.spec import StageSpec
from .graph import kept_filters

KINDS = ("macs", "params")
TOLERANCE = 0.01  # a stage's cut must leave the target reachable within 1 % (the goal: 2 %)
SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
VALID = ("an absolute count with an optional K, M or G suffix (40M, 120K, 5000000) or a fraction of the "
         "unpruned plan in (0, 1] with an x suffix (0.25x)")
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Budget:
    kind: str  # "macs" | "params"
    text: str  # as given: "40M", "0.25x"
    value: float  # the count, or the fraction when relative
    relative: bool

    @property
    def option(self) -> str:
        return f"--target-{self.kind}"

    def target(self, unpruned: int) -> int:
        """The largest whole count within the budget (the final cost must never exceed it)."""
        return math.floor(self.value * unpruned + 1e-9) if self.relative else math.floor(self.value)


def parse_budget(text: str, kind: str) -> Budget:
    """'40M' -> 40,000,000 (absolute), '0.25x' -> a quarter of the unpruned plan (relative)."""
    option = f"--target-{kind}"
    t = str(text).strip()
    rel = re.fullmatch(_NUMBER + r"x", t)
    if rel:
        f = float(rel.group(1))
        if not 0 < f <= 1:
            raise ConfigError(f"{option} {text}: a fraction of the unpruned plan must be in (0, 1]; valid: {VALID}")
        return Budget(kind, t, f, True)
    ab = re.fullmatch(_NUMBER + r"([kKmMgG]?)", t)
    if ab:
        v = float(ab.group(1)) * SUFFIX[ab.group(2).upper()]
        if v < 1:
            raise ConfigError(f"{option} {text}: a count must be at least 1; valid: {VALID}")
        return Budget(kind, t, v, False)
    raise ConfigError(f"{option} expects {VALID}, got '{text}'")


def budget_of(cfg: CompressConfig) -> Budget | None:
    """The run's budget, or None; both kinds at once are refused."""
    if cfg.target_macs is not None and cfg.target_params is not None:
        raise ConfigError("give one budget: --target-macs or --target-params, not both")
    if cfg.target_macs is not None:
        return parse_budget(cfg.target_macs, "macs")
    if cfg.target_params is not None:
        return parse_budget(cfg.target_params, "params")
    return None


# --------------------------------------------------------------------------------------------------
# The cost model: fvcore's count of a backbone as a function of its kept widths.

@dataclass(frozen=True)
class BlockCost:
    """Block cost = per_in_filter * c_in * w + per_filter * w (c_in: input width before psi)."""
    macs_in_filter: int
    macs_filter: int
    params_in_filter: int
    params_filter: int


def _conv_block(stage: StageSpec, hw: tuple[int, int]) -> tuple[BlockCost, tuple[int, int]]:
    # nn.blocks.ConvBlock: [psi] conv3x3 (bias only without BN) [BN] activation (fvcore counts none).
    f = 4 if stage.psi else 1
    h, w = (hw[0] // 2, hw[1] // 2) if stage.psi else hw
    px = h * w
    return BlockCost(9 * f * px, 2 * px if stage.bn else 0, 9 * f, 2 if stage.bn else 1), (h, w)


def _vgg_block(stage: StageSpec, hw: tuple[int, int]) -> tuple[BlockCost, tuple[int, int]]:
    # nn.blocks.VGGBlock: conv3x3 with bias, [BN], activation, [max-pool 2x2].
    px = hw[0] * hw[1]
    out = (hw[0] // 2, hw[1] // 2) if stage.pool else hw
    return BlockCost(9 * px, 2 * px if stage.bn else 0, 9, 3 if stage.bn else 1), out


BLOCK_COSTS: dict[str, Callable[[StageSpec, tuple[int, int]], tuple[BlockCost, tuple[int, int]]]] = {
    "conv": _conv_block, "vgg": _vgg_block,
}


@dataclass(frozen=True)
class CostModel:
    in_channels: int
    plan_widths: list[int]
    blocks: list[BlockCost]

    @classmethod
    def of(cls, plan: list[StageSpec], image_shape: tuple[int, int, int]) -> "CostModel":
        blocks, hw = [], tuple(image_shape[1:])
        for s in plan:
            if s.block not in BLOCK_COSTS:
                raise ConfigError(f"budgets know the cost of block types {', '.join(BLOCK_COSTS)}, "
                                  f"not '{s.block}'")
            cost, hw = BLOCK_COSTS[s.block](s, hw)
            blocks.append(cost)
        return cls(image_shape[0], [s.width for s in plan], blocks)

    def cost(self, kind: str, widths: list[int]) -> int:
        """MACs or parameters of the first len(widths) blocks with these kept widths."""
        total, c = 0, self.in_channels
        for b, w in zip(self.blocks, widths):
            per_in, per = (b.macs_in_filter, b.macs_filter) if kind == "macs" else (b.params_in_filter,
                                                                                  b.params_filter)
            total += per_in * c * w + per * w
            c = w
        return total

    def unpruned(self, kind: str) -> int:
        return self.cost(kind, self.plan_widths)

    def floor(self, round_to: int, start: int = 0) -> list[int]:
        """One filter per block (round_to filters) from block `start` on."""
        return [min(round_to, n) for n in self.plan_widths[start:]]


def widths_at(plan_widths: list[int], ratio: float, round_to: int) -> list[int]:
    return [kept_filters(n, ratio, round_to) for n in plan_widths]


def check_feasible(budget: Budget, model: CostModel, round_to: int, plan_name: str) -> int:
    """The target count; refused if even one filter per block (round_to filters) costs more."""
    unpruned = model.unpruned(budget.kind)
    target = budget.target(unpruned)
    least = model.cost(budget.kind, model.floor(round_to))
    if least > target:
        unit = "MACs" if budget.kind == "macs" else "parameters"
        per = "one filter" if round_to == 1 else f"{round_to} filters (compress.round_to)"
        raise ConfigError(f"{budget.option} {budget.text} ({target:,} {unit}) cannot be met: plan {plan_name} "
                          f"with {per} per block still costs {least:,}; valid: at least {least:,} "
                          f"({math.ceil(1e4 * least / unpruned) / 1e4:g}x of the unpruned {unpruned:,})")
    return target


# --------------------------------------------------------------------------------------------------
# The ratio rule.

def rest_ratio(model: CostModel, kind: str, target: int, fixed: list[int], round_to: int) -> float | None:
    """The smallest ratio that, applied to every block after `fixed`, brings the cost within target
    (None if one filter per block is still too much). The cost falls as the ratio grows: bisection."""
    rest = model.plan_widths[len(fixed):]

    def fits(r: float) -> bool:
        return model.cost(kind, fixed + widths_at(rest, r, round_to)) <= target

    if fits(0.0):
        return 0.0
    if model.cost(kind, fixed + model.floor(round_to, len(fixed))) > target:
        return None
    lo, hi = 0.0, 1.0 - 1e-12  # at hi every later block keeps round_to filters: fits
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def drop_curve(points: list[tuple[float, float]], chance: float) -> tuple[list[float], list[float]]:
    """(ratios, held-out accuracy drops) of one stage: non-decreasing, and the drop to chance at ratio 1.

    points: (ratio, held-out accuracy %) including ratio 0. A later ratio never drops less than an
    earlier one (noise on a small held-out set can make a bigger cut look better).
    """
    pts = sorted(points)
    if not pts or pts[0][0] != 0:
        raise ValueError("a sensitivity curve needs its unpruned point (ratio 0)")
    acc0, worst = pts[0][1], 0.0
    xs, ys = [], []
    for r, a in pts:
        worst = max(worst, acc0 - a)
        xs.append(r)
        ys.append(worst)
    xs.append(1.0)
    ys.append(max(worst, acc0 - chance))
    return xs, ys


def interpolate(curve: tuple[list[float], list[float]], r: float) -> float:
    xs, ys = curve
    for i in range(1, len(xs)):
        if r <= xs[i]:
            t = (r - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


@dataclass(frozen=True)
class Choice:
    ratio: float
    width: int
    rule: str  # "sensitivity", "last stage", "fallback"
    rest_ratio: float | None = None  # the common ratio later blocks need after this choice
    predicted_drop: float | None = None  # d_j(r) + later * mean d(R), held-out points


def ratio_for(n: int, width: int, round_to: int) -> float:
    """A ratio (6 decimals where exact) for which a cut keeps exactly `width` of n filters."""
    r = 1.0 - width / n
    short = round(r, 6)
    return short if kept_filters(n, short, round_to) == width else r


def valid_widths(n: int, round_to: int) -> list[int]:
    """Widths kept_filters can give for n filters, largest first."""
    return sorted({n} | {m * round_to for m in range(1, n // round_to + 1)}, reverse=True)


def choose(model: CostModel, kind: str, target: int, fixed: list[int], curves: list[list[tuple[float, float]]],
           round_to: int, chance: float) -> Choice:
    """The prune ratio of stage j = len(fixed), given the kept widths of blocks 1..j-1 (`fixed`) and
    the held-out sensitivity (ratio, accuracy %) of stages 1..j (`curves`, ratio 0 included)."""
    j = len(fixed)
    n, later = model.plan_widths[j], len(model.plan_widths) - 1 - j
    if later == 0:
        for w in valid_widths(n, round_to):
            if model.cost(kind, fixed + [w]) <= target:
                return Choice(ratio_for(n, w, round_to), w, "last stage")
        w = min(round_to, n)  # unreachable after check_feasible and admissible earlier stages
        return Choice(ratio_for(n, w, round_to), w, "last stage")
    drops = [drop_curve(c, chance) for c in curves]
    rest = model.plan_widths[j + 1:]
    floor = model.floor(round_to, j + 1)
    # The measured ratios, and r*: the one ratio that, applied to this block and every later one
    # alike, meets the target (the grid may hold no admissible ratio near it).
    uniform = rest_ratio(model, kind, target, fixed, round_to)
    candidates = sorted({r for r, _ in curves[j]} | ({uniform} if uniform is not None else set()))
    best = None
    for r in candidates:
        w = kept_filters(n, r, round_to)
        if r == uniform:
            r = ratio_for(n, w, round_to)  # the same width, a readable ratio
        if model.cost(kind, fixed + [w] + floor) > target:
            continue  # infeasible: even one filter per later block would be too much
        if r > 0 and model.cost(kind, fixed + [w] + rest) < (1 - TOLERANCE) * target:
            continue  # over-cut: the later blocks could not grow back to the target
        big_r = rest_ratio(model, kind, target, fixed + [w], round_to)
        drop = interpolate(drops[j], r) + later * sum(interpolate(d, big_r) for d in drops) / len(drops)
        key = (round(drop, 9), r)
        if best is None or key < best[0]:
            best = (key, Choice(r, w, "sensitivity", big_r, round(drop, 4)))
    if best is not None:
        return best[1]
    for w in valid_widths(n, round_to):  # none admissible (this block's filters are coarse next to the
        if model.cost(kind, fixed + [w] + floor) <= target:  # target): the largest width that keeps it reachable
            return Choice(ratio_for(n, w, round_to), w, "fallback",
                          rest_ratio(model, kind, target, fixed + [w], round_to))
    w = min(round_to, n)  # unreachable after check_feasible and the choices before
    return Choice(ratio_for(n, w, round_to), w, "fallback")
