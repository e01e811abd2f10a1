"""Prune any stage through Torch-Pruning's dependency graph: what is coupled comes from the trace.

One probe module runs `head(block(x))` and `next_block(block(x))` on the same block output, so
the graph sees every consumer of the stage's channels. Its groups rooted in the block are of two
kinds: *internal* (every member lies in the block: a BasicBlock's conv1 -> bn1 -> conv2 input,
an inverted residual's expand -> depthwise -> project input) and *output* (the stage's output
channels, coupled across residual adds and shortcuts into the head's input and the next block's
input). Names are the block's qualified module names; no attribute (`.conv`) is assumed.

Scope rule: "internal" prunes the internal groups, and where a block has none (a plain block of
one conv: the paper's blocks, a VGG layer) its output groups instead, so the paper's blocks cut
their filters (compress.network.cut_stage cuts every stage through here); "all" prunes both kinds. A
group whose channels also run out of the next block (a residual stream crossing the cut) keeps
its width: the stage after next is not in the trace, so those channels are not offered. Cuts are made on
copies first, so a coupling the trace cannot see (psi's pixel_unshuffle before the next block)
is refused before the real modules change.

A grouped conv (ResNeXt, RegNet) keeps its count of groups: the same positions are cut in every
group (`kept_width`). A layer whose output is the network's (the class scores) is never cut. Where
tp cannot trace the stage whole (ShuffleNetV2's channel shuffles), its parts are traced one by
one and only the channels inside each are cut (compress.pieces); the plan says so.

Scores are `compress.importance`'s criteria on the whole group (tp's group importances: "l1" is
the mean-normalised L1 of every coupled weight).
"""
from __future__ import annotations
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from ..config import SCOPES
from ..errors import ConfigError, SpecError
from ..train.modes import eval_mode
from .importance import NEEDS_GRADIENTS, check_importance, lowest
from .pieces import PieceGraphs, trace_pieces
from .trace import ROOTS, GroupInfo, Member, Probe, Untraceable, build_graph, channel_groups, output_layers

__all__ = ["ROOTS", "GroupInfo", "Member", "Cut", "PruneRecord", "kept_filters", "kept_width", "trace_groups",
           "coupled_groups", "stage_groups", "prune_stage", "replay", "PieceGraphs"]
Agree = Callable[[Any], Any]  # every rank gets rank 0's decision (Dist.broadcast); identity alone


def kept_filters(n: int, ratio: float, round_to: int = 1) -> int:
    """Filters left after removing `ratio` of `n`, rounded to a multiple of round_to (at least one)."""
    keep = round(n * (1.0 - ratio) / round_to) * round_to
    return int(min(n, max(round_to if round_to <= n else n, keep)))


def kept_width(width: int, ratio: float, round_to: int = 1, channel_groups: int = 1) -> int:
    """kept_filters for a group whose layers split their channels into `channel_groups` groups
    (ResNeXt's and RegNet's grouped convs): every group keeps as many, so the count of groups stays
    and the total is a multiple of it; round_to applies per group where it divides evenly."""
    if channel_groups <= 1:
        return kept_filters(width, ratio, round_to)
    per_round = round_to // channel_groups if round_to % channel_groups == 0 else 1
    return kept_filters(width // channel_groups, ratio, max(1, per_round)) * channel_groups


@dataclass(frozen=True)
class Cut:
    root: str
    width: int  # the root's filters before the cut
    removed: tuple[int, ...]
    kind: str


@dataclass(frozen=True)
class PruneRecord:
    """What prune_stage cut, enough to cut the same on a fresh stage (`replay`)."""

    cuts: tuple[Cut, ...]
    parts: bool = False  # the groups came from tracing the stage's parts one by one (compress.pieces)

    def as_dict(self) -> dict:
        d = {"cuts": [{"root": c.root, "width": c.width, "removed": list(c.removed), "kind": c.kind}
                      for c in self.cuts]}
        return {**d, "parts": True} if self.parts else d

    @classmethod
    def from_dict(cls, d: dict) -> PruneRecord:
        try:
            return cls(tuple(Cut(c["root"], int(c["width"]), tuple(int(i) for i in c["removed"]), c["kind"])
                             for c in d["cuts"]), bool(d.get("parts", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"a pruning record needs 'cuts' of root, width, removed and kind ({e})") from None


def trace_groups(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...]):
    """The dependency graph and [(GroupInfo, root module)] of every group rooted in the block."""
    p = next(block.parameters(), None)
    if p is None:
        raise ConfigError(f"{type(block).__name__} has no parameters: there is nothing to prune")
    try:
        graph, entry = build_graph(block, head, next_block, input_shape, p)
    except Untraceable as e:
        return trace_pieces(block, input_shape, str(e))  # cut inside what can be traced, leave the rest whole
    parts = {"block": block, "head": head, "next": next_block}
    where = {m: (part, name) for part, mod in parts.items() if mod is not None for name, m in mod.named_modules()}
    order = {m: i for i, m in enumerate(block.modules())}
    head_layers = [m for m in head.modules() if isinstance(m, ROOTS)]
    # The head's logits and the next block's outputs keep their width; the head's hidden layers need not.
    ignored = head_layers[-1:] + [m for m in (next_block.modules() if next_block else []) if isinstance(m, ROOTS)]
    if not head_layers and next_block is None and not isinstance(head, nn.Identity):
        # Its head has no layer (a flatten, a pooling): the block ends the network, its outputs are the
        # class scores. (An Identity head is a stage's without one of its own: what reads it next is cut with it.)
        ignored += output_layers(block, input_shape)
    ignored += [entry] if entry is not None else []
    found = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(ROOTS)):
        members, seen = [], set()
        for item in group.items:
            m, out = item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)
            if m in where and (m, out) not in seen:
                seen.add((m, out))
                members.append(Member(*where[m], "out" if out else "in"))
        roots = [m for m, out in seen if out and isinstance(m, ROOTS) and where[m][0] == "block"]
        if not roots:
            continue  # a head-internal group
        root = min(roots, key=order.__getitem__)
        kind = "internal" if all(mb.part == "block" for mb in members) else "output"
        info = GroupInfo(where[root][1], tuple(members), graph.get_pruner_of_module(root).get_out_channels(root),
                         kind, any(mb.part == "next" for mb in members), channel_groups(group))
        found.append((info, root))
    found.sort(key=lambda f: order[f[1]])
    return graph, found


def _select(found: list, scope: str) -> list:
    if scope not in SCOPES:
        raise ConfigError(f"unknown pruning scope '{scope}'; valid: {', '.join(SCOPES)}")
    if scope == "all":
        return found
    internal = [f for f in found if f[0].kind == "internal"]
    return internal or found  # a plain block has only its output group


def coupled_groups(block: nn.Module, head: nn.Module, next_block: nn.Module | None,
                   input_shape: tuple[int, ...], scope: str = "internal") -> list[GroupInfo]:
    """The groups prune_stage would cut in `scope`, in the block's module order."""
    return [info for info, _ in _select(trace_groups(block, head, next_block, input_shape)[1], scope)]


def prune_stage(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
                ratio: float, importance: str, round_to: int = 1, scope: str = "internal",
                gradients: Callable[[], None] | None = None, agree: Agree = lambda x: x,
                widths: dict[str, int] | None = None) -> PruneRecord:
    """Cut `ratio` of every selected group's channels in place (the least important by `importance`,
    scored on the block and the head only), with everything coupled to them in the head and the
    next block. Every group is scored on the
    uncut stage before any is cut, so the result does not depend on the order of the groups.
    `agree` gives every rank rank 0's choice. `widths` (root: width before an earlier cut): the
    ratio counts from those, so a later cut of several only takes what the earlier ones left."""
    check_importance(importance, gradients)
    graph, found = trace_groups(block, head, next_block, input_shape)
    parts = isinstance(graph, PieceGraphs)
    outside = set(next_block.modules()) if next_block is not None else set()
    cuts = _choose(graph, found, scope, ratio, round_to, importance, gradients, agree, widths, outside)
    try:
        _dry_run(block, head, next_block, input_shape, cuts, parts)
    except ConfigError:
        if parts:
            raise
        # tp mapped a coupling wrongly (DenseNet's concatenated features): cut inside the parts
        # instead, where they offer something, else refuse the stage as the dry run said
        graph, found = trace_pieces(block, input_shape, "the stage traced whole cuts wrongly")
        inside = _choose(graph, found, scope, ratio, round_to, importance, None, agree, widths, outside)
        if not inside:
            raise
        cuts, parts = inside, True
        _dry_run(block, head, next_block, input_shape, cuts, parts)
    _cut(graph, block, cuts)
    for m in (block, head, next_block):
        for p in (m.parameters() if m is not None else []):
            p.grad = None
    return PruneRecord(tuple(cuts), parts)


def _choose(graph, found: list, scope: str, ratio: float, round_to: int, importance: str,
            gradients: Callable[[], None] | None, agree: Agree, widths: dict[str, int] | None,
            outside: set) -> list[Cut]:
    """The cuts of every selected group, each scored on the uncut stage without the `outside`
    modules (the next stage's); gradients drawn first where the criterion needs them (not again
    when `gradients` is None: they are there)."""
    original = widths or {}
    selected = [(info, root, min(info.width, kept_width(original.get(info.root, info.width), ratio, round_to,
                                                        info.channel_groups)))
                for info, root in _select(found, scope)]
    selected = [(info, root, keep) for info, root, keep in selected if keep < info.width]
    if not selected:
        return []  # nothing to cut: no gradients drawn, no batches taken from the stream
    if importance in NEEDS_GRADIENTS and gradients is not None:
        gradients()
    cuts = []
    for info, root, keep in selected:
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                        idxs=list(range(info.width)))
        scored = _without(group, outside)
        cuts.append(Cut(info.root, info.width, tuple(lowest(scored, importance, info.width - keep, info.channel_groups)),
                        info.kind))
    chosen = agree([list(c.removed) for c in cuts])
    return [replace(c, removed=tuple(removed)) for c, removed in zip(cuts, chosen)]


def _without(group, outside: set):
    """The group's items but those of `outside` modules: the next stage's input weights are cut
    with the stage's filters but never scored, so a filter's score is the stage's and its head's."""
    if not outside:
        return group
    scored = tp.dependency.Group()
    scored._DG = group._DG
    # The items themselves: each carries the root_idxs the graph gave it (Group.add_dep would make
    # new items without them, and tp's importances then fail on None).
    scored._group = [item for item in group.items if item.dep.target.module not in outside]
    return scored


def replay(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
           record: PruneRecord | dict) -> None:
    """Cut exactly what `record` says on fresh, uncut modules (then load the pruned weights into them)."""
    record = record if isinstance(record, PruneRecord) else PruneRecord.from_dict(record)
    graph, found = _trace(block, head, next_block, input_shape, record.parts)
    width = {info.root: info.width for info, _ in found}  # as the cuts, in order, leave them
    for c in record.cuts:
        if c.root not in width:
            raise SpecError(f"pruning record cuts '{c.root}', which roots no group of this block; "
                            f"roots: {', '.join(width) or 'none'}")
        if width[c.root] != c.width:
            raise SpecError(f"pruning record cuts {c.width} filters of '{c.root}', which has {width[c.root]}")
        if not all(0 <= i < c.width for i in c.removed) or len(set(c.removed)) != len(c.removed) \
                or len(c.removed) >= c.width:
            raise SpecError(f"pruning record removes filters {list(c.removed)} of '{c.root}', which has {c.width}: "
                            f"each at most once, and not all")
        width[c.root] -= len(c.removed)
    _cut(graph, block, record.cuts)


def _trace(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
           parts: bool):
    return trace_pieces(block, input_shape) if parts else trace_groups(block, head, next_block, input_shape)


def _dry_run(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
             cuts: list[Cut], parts: bool = False) -> None:
    """Make the cuts on copies first (traced as the cuts were: whole or by `parts`). A coupling the
    trace cannot see (an op that moves channels to other positions, as psi's pixel_unshuffle: tp
    takes it for elementwise) shows here as a shape mismatch, and the stage is refused before its
    real modules change."""
    if not cuts:
        return
    probe = Probe(*copy.deepcopy((block, head, next_block)))
    graph, _ = _trace(probe.block, probe.head, probe.next, input_shape, parts)
    _cut(graph, probe.block, cuts)
    p = next(probe.block.parameters())
    try:
        with torch.no_grad(), eval_mode(probe):
            probe(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    except RuntimeError as e:
        raise ConfigError(f"cutting {', '.join(c.root for c in cuts)} breaks the stage ({str(e).splitlines()[0]}): "
                          f"the trace misses a coupling, e.g. an op that moves channels as psi does; prune without "
                          f"that next block and cut its input directly") from None


def _cut(graph: tp.DependencyGraph, block: nn.Module, cuts) -> None:
    for c in cuts:
        root = block.get_submodule(c.root)
        graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs=list(c.removed)).prune()


def stage_groups(block: nn.Module, head: nn.Module, next_block: nn.Module | None, input_shape: tuple[int, ...],
                 scope: str = "internal") -> tuple[list[GroupInfo], str | None]:
    """coupled_groups, and where the stage was traced part by part, a line saying so and what is left whole."""
    graph, found = trace_groups(block, head, next_block, input_shape)
    note = None
    if isinstance(graph, PieceGraphs):
        whole = f"; left whole: {', '.join(graph.whole)}" if graph.whole else ""
        note = (f"traced part by part, only the channels inside each part cut (its input and output channels "
                f"kept{whole}): {graph.reason}")
    return [info for info, _ in _select(found, scope)], note
