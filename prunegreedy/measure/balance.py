"""A split cut again into stages of about equal training memory.

Every stage-wise trainer keeps one stage's activations for its backward at a time, so the largest
stage bounds training memory, and in a ResNet the first stage holds the most (its maps are the
largest). `balanced_split(model, ["layer1", "layer2", "layer3"], 4, (3, 32, 32))` cuts the split's
stages again at the children of those that are nn.Sequential (a ResNet's blocks) and chooses,
among those cut points, the stages whose largest keeps the fewest bytes for the backward (a dynamic
programme over the cut points; among prefixes of equal largest it keeps the smaller sum of squares,
so the rest come out even too). Bytes are what autograd saves for a training
step of the stage alone, the stages before it run without a graph (measure.memory), on a copy of
the model at batch 2: they grow linearly with the batch, so the choice does not depend on it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.split import split_stages
from .memory import saved_activation_bytes

PROBE_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


def cut_points(model: nn.Module, split: list[str]) -> list[str]:
    """The split's ends, each an nn.Sequential's replaced by its children (a stage that ends at
    `layer1` may end at `layer1.0`, `layer1.1` or `layer1.2`)."""
    points = []
    for end in split:
        m = model.get_submodule(end)
        points += [f"{end}.{c}" for c, _ in m.named_children()] if isinstance(m, nn.Sequential) and len(m) else [end]
    return points


def balanced_split(model: nn.Module, split: list[str], stages: int, input_shape: tuple[int, ...]) -> list[str]:
    """`stages` stage ends among the split's cut points, the last the split's own, whose largest stage
    keeps the fewest activations for training."""
    points = cut_points(model, split)
    if not 1 <= stages <= len(points):
        raise ConfigError(f"model.balance must be between 1 and {len(points)} for {type(model).__name__} split at "
                          f"{','.join(split)} (its cut points: {','.join(points)}), got {stages}")
    cost = _stage_bytes(model, points, input_shape)
    n = len(points)
    # best[k][j]: (largest, sum of squares, ends) of the first j cut pieces in k stages
    best: list[dict[int, tuple[int, int, tuple[int, ...]]]] = [{0: (0, 0, ())}]
    for k in range(1, stages + 1):
        row = {}
        for j in range(k, n - (stages - k) + 1):
            row[j] = min((max(big, cost[i][j]), sq + cost[i][j] ** 2, ends + (j,))
                         for i, (big, sq, ends) in best[k - 1].items() if i < j)
        best.append(row)
    ends = [points[j - 1] for j in best[stages][n][2]]
    return [_whole(end, split, points, ends) for end in ends]


def _whole(end: str, split: list[str], points: list[str], ends: list[str]) -> str:
    """The split's own name `layer1` for its last child `layer1.2` where no other end lies inside it."""
    parent = end.rpartition(".")[0]
    after = points.index(end) + 1
    last = parent in split and (after == len(points) or not points[after].startswith(parent + "."))
    return parent if last and not any(e != end and e.startswith(parent + ".") for e in ends) else end


def _stage_bytes(model: nn.Module, points: list[str], input_shape: tuple[int, ...]) -> list[list[int]]:
    """cost[i][j]: bytes autograd saves for a training step of the pieces i..j-1 (cut at `points`)."""
    net = copy.deepcopy(model).train().requires_grad_(True)  # the model's BatchNorm statistics stay as they are
    pieces, _ = split_stages(net, points)
    p = next(net.parameters())
    params = list(net.state_dict().values())
    cost = [[0] * (len(pieces) + 1) for _ in range(len(pieces) + 1)]
    with torch.random.fork_rng(devices=[]):  # a dropout in a piece would draw from the run's generator
        h = torch.zeros(PROBE_BATCH, *input_shape, device=p.device, dtype=p.dtype)
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces) + 1):
                cost[i][j] = saved_activation_bytes(lambda i=i, j=j: nn.Sequential(*pieces[i:j])(h), params)[0]
            with torch.no_grad():
                h = pieces[i](h)
    return cost
