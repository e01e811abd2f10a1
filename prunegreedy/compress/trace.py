"""How Torch-Pruning sees a stage: the probe it traces, the graph, and what a group holds.

The probe runs `head(block(x))` and `next_block(block(x))` on the same block output, so the
graph sees every consumer of the stage's channels. The stage's input comes from a fixed identity
layer (the entry), never cut: tp then counts the input's channels, and a group coupled to them is
not offered. Grouped convs
split a group's channels into groups that are cut alike (`channel_groups`); the layer that ends
the network (`output_layers`) gives the class scores and is never cut.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError
from ..train.modes import eval_mode

ROOTS = (nn.Conv2d, nn.Linear)


class Member(NamedTuple):
    part: str  # "block", "head" or "next"
    name: str  # qualified name within that part
    dim: str  # "out" (its filters / features) or "in" (its input channels)


@dataclass(frozen=True)
class GroupInfo:
    root: str  # the block's first Conv2d/Linear (in module order) whose filters the group cuts
    members: tuple[Member, ...]  # named modules only; tp's elementwise-op nodes are left out
    width: int
    kind: str  # "internal" or "output"
    reaches_next: bool
    channel_groups: int = 1  # a grouped conv (or GroupNorm) in the group: cut the same positions in every group


class Probe(nn.Module):
    """Block output into the head and, when given, into the next block: one trace sees all consumers."""

    def __init__(self, block: nn.Module, head: nn.Module, next_block: nn.Module | None,
                 entry: nn.Module | None = None):
        super().__init__()
        self.block, self.head, self.next, self.entry = block, head, next_block, entry

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.block(x if self.entry is None else self.entry(x))
        return (self.head(z),) if self.next is None else (self.head(z), self.next(z))


def build_graph(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
                p: torch.Tensor, entry: nn.Module | None = None) -> tuple[tp.DependencyGraph, nn.Module | None]:
    """Torch-Pruning's graph of block -> (head, next block), the block's input made by a fixed
    identity layer (the entry, returned; given, or made here for a map or a vector), never cut: tp
    then counts the channels of an input the block passes on untouched (ShuffleNetV2's chunk), and
    a group coupled to the input (a depthwise conv first in the stage) is not offered."""
    attention = next(((n, m) for part in (block, next_block) if part is not None for n, m in part.named_modules()
                      if isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__), None)
    if attention is not None:  # tp's trace of one takes minutes, and heads are not channels
        raise ConfigError(f"'{attention[0]}' is an attention layer ({type(attention[1]).__name__}): prunegreedy "
                          f"cuts the channels of convolutional networks, not attention heads; train it unpruned "
                          f"(--prune-ratio 0)")
    example = torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)
    if entry is None and len(input_shape) in (1, 3):
        entry = identity_layer(input_shape[0], len(input_shape) == 3).to(device=p.device, dtype=p.dtype)
    probe = Probe(block, head, next_block, entry)
    try:
        # Tracing runs a forward pass (BN statistics stay where they are) and reads autograd, so it
        # works inside a caller's torch.no_grad() too (loading a network to run it).
        with torch.enable_grad(), eval_mode(probe):
            # The outputs as they are (tp traces each): a sum over them would make a block whose output
            # is the probe's own (no head layer after it) one group with a scalar, which tp cannot cut.
            return tp.DependencyGraph().build_dependency(probe, example_inputs=example, verbose=False), entry
    except Exception as e:  # tp raises whatever its index mapping meets (ZeroDivisionError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise Untraceable(f"Torch-Pruning cannot trace {type(block).__name__} ({modules_of(block)}): "
                          f"{type(e).__name__}: {first}; train it unpruned (--prune-ratio 0) or end the "
                          f"stage elsewhere (--split)") from None


class Untraceable(ConfigError):
    """Torch-Pruning's tracer failed on a module (one line: which and why)."""


def identity_layer(channels: int, conv: bool) -> nn.Module:
    layer = nn.Conv2d(channels, channels, 1, bias=False) if conv else nn.Linear(channels, channels, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(channels).view_as(layer.weight))  # the identity: values pass unchanged
    return layer


def modules_of(block: nn.Module) -> str:
    """A stage's first and last modules by name (a traced stage), else its class."""
    graph = getattr(block, "graph", None)
    called = [str(n.target) for n in graph.nodes if n.op == "call_module"] if graph is not None else []
    return f"{called[0]}..{called[-1]}" if len(called) > 1 else (called[0] if called else type(block).__name__)


def run_hooked(block: nn.Module, input_shape: tuple[int, ...], hook, modules) -> None:
    """One eval-mode forward of the block on zeros with `hook` on each of `modules` (removed after)."""
    hooks = [m.register_forward_hook(hook) for m in modules]
    p = next(block.parameters())
    try:
        with torch.no_grad(), eval_mode(block):
            block(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()


def output_layers(block: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The Conv2d or Linear that runs last in the block's forward: where a block's output is the
    network's (a last stage that holds the classifier, as SqueezeNet's final conv), its channels are
    the class scores and are never cut."""
    called: list[nn.Module] = []
    layers = [m for m in block.modules() if isinstance(m, ROOTS)]
    run_hooked(block, input_shape, lambda m, i, o: called.append(m), layers)
    return called[-1:]


def channel_groups(group) -> int:
    """How many channel groups the group's grouped layers split it into (the least common multiple
    of their groups; depthwise convs cut one channel at a time and count as one), as tp's pruners
    do: a grouped conv's input is cut at the same positions in every group."""
    n = 1
    for item in group.items:
        m = item.dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups != m.out_channels:
            n = math.lcm(n, m.groups)
        elif isinstance(m, nn.GroupNorm) and m.num_groups > 1:
            n = math.lcm(n, m.num_groups)
    return n


