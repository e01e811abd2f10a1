"""Shared pieces of the benchmark scripts: a frozen prefix + block + head per stage, timers."""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from prunegreedy.measure.size import output_shape
from prunegreedy.nn import network as models_net
from prunegreedy.nn import spec as models_spec
from prunegreedy.train import loop as train_loop
from prunegreedy.train import modes as train_modes


def stage_modules(plan: list[models_spec.StageSpec], widths_in: list[int], j: int, classes: int = 10,
                  memory_format=torch.channels_last):
    """Frozen blocks 1..j-1 (input widths as given, e.g. pruned), and block j + head j to train."""
    blocks, shape = [], (3, 32, 32)
    for s, w in zip(plan[:j], widths_in[:j]):
        blocks.append(models_net.make_block(shape[0], dataclasses.replace(s, width=w)))
        shape = output_shape(blocks[-1], shape)
    prefix = train_modes.freeze(nn.Sequential(*blocks).to(memory_format=memory_format))
    block = models_net.make_block(shape[0], plan[j]).to(memory_format=memory_format)
    size = output_shape(block, shape)[1:]
    head = models_net.make_head(plan[j].width, plan[j], classes, size).to(memory_format=memory_format)
    return prefix, block, head


def plan_modules(plan: list[models_spec.StageSpec], input_shape=(3, 32, 32), classes: int = 10):
    """Every block of a plan at its plan width, each with its own head, in the trainers' order."""
    blocks, heads, shape = [], [], tuple(input_shape)
    for s in plan:
        blocks.append(models_net.make_block(shape[0], s))
        shape = output_shape(blocks[-1], shape)
        heads.append(models_net.make_head(shape[0], s, classes, shape[1:]))
    return blocks, heads


def end_to_end_modules(plan: list[models_spec.StageSpec], classes: int = 10, memory_format=torch.channels_last):
    """Empty prefix, every block of the plan as one trained body, the last head: endtoend's network."""
    blocks, shape = [], (3, 32, 32)
    for s in plan:
        blocks.append(models_net.make_block(shape[0], s))
        shape = output_shape(blocks[-1], shape)
    head = models_net.make_head(shape[0], plan[-1], classes, shape[1:])
    body = nn.Sequential(*blocks).to(memory_format=memory_format)
    return nn.Sequential(), body, head.to(memory_format=memory_format)


def bare_step_fn(prefix, block, head, batch: int, cfg):
    """One training step on random tensors: the compute bound of the stage (no data pipeline)."""
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = train_loop.make_optimizer([block, head], 0.01, cfg)

    def step():
        with torch.no_grad():
            f = prefix(x)
        loss = F.cross_entropy(head(block(f)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_it(fn, n: int, warmup: int = 2) -> float:
    """Seconds per call, after warm-up (eager speed in a fresh process is far below warm speed)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n
