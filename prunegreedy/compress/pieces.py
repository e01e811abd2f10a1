"""A stage Torch-Pruning cannot trace whole, cut inside the parts it can (compress.graph's fallback)."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .trace import ROOTS, GroupInfo, Member, Untraceable, build_graph, channel_groups, identity_layer, run_hooked

# tp's nodes for ops that move channels between positions; a group through one of them is trusted
# only where the whole stage traced (its index mappings then hold), never inside a piece.
_MOVES = tuple(getattr(tp.ops, n) for n in ("_ConcatOp", "_SplitOp", "_ReshapeOp", "_UnbindOp", "_SliceOp",
                                             "_ExpandOp"))


class PieceGraphs:
    """The graphs of the pieces of a stage traced one by one (trace_pieces): each root's own graph
    answers for it, as one graph does for a whole stage; `whole` names what is left whole."""

    def __init__(self, reason: str):
        self.graph_of: dict[nn.Module, tp.DependencyGraph] = {}
        self.whole: list[str] = []
        self.reason = reason  # why the stage was not traced whole

    def get_pruner_of_module(self, m: nn.Module):
        return self.graph_of[m].get_pruner_of_module(m)

    def get_pruning_group(self, m: nn.Module, fn, idxs):
        return self.graph_of[m].get_pruning_group(m, fn, idxs)


def trace_pieces(block: nn.Module, input_shape: tuple[int, ...], reason: str = ""):
    """Where tp cannot trace a stage with its consumers (ShuffleNetV2's channel shuffles one after
    another), trace each of its parts alone, from the largest down, each between a fixed entry and
    exit layer: only a group that stays inside one part and passes no op that moves channels is
    offered (the channels inside a block); the part's inputs and outputs, and any part tp cannot
    trace down to its layers, are left whole (`PieceGraphs.whole`)."""
    calls = _calls(block, input_shape)
    names = {m: n for n, m in block.named_modules()}
    order = {m: i for i, m in enumerate(block.modules())}
    graphs, found = PieceGraphs(reason), []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if next(child.parameters(), None) is None:
                continue
            if child not in calls:  # called more than once, or not with one tensor
                graphs.whole.append(names[child])
                continue
            shape, out = calls[child]
            p = next(child.parameters())
            try:
                if len(shape) not in (1, 3) or len(out) not in (1, 3):
                    raise Untraceable(f"{names[child]} takes or gives neither a map nor a vector")
                exit_layer = identity_layer(out[0], len(out) == 3).to(device=p.device, dtype=p.dtype)
                entry = identity_layer(shape[0], len(shape) == 3).to(device=p.device, dtype=p.dtype)
                graph, entry = build_graph(child, exit_layer, None, shape, p, entry)
            except Untraceable:
                if next(child.children(), None) is None:
                    graphs.whole.append(names[child])
                else:
                    visit(child)
                continue
            found.extend(_piece_groups(graph, child, names, order, [exit_layer, entry], graphs))

    visit(block)
    found.sort(key=lambda f: order[f[1]])
    return graphs, found


def _piece_groups(graph: tp.DependencyGraph, piece: nn.Module, names: dict, order: dict, fixed: list,
                  graphs: PieceGraphs):
    inside = set(piece.modules())
    out = []
    for group in graph.get_all_groups(ignored_layers=fixed, root_module_types=list(ROOTS)):
        mods = [(item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)) for item in group.items]
        if any(m in fixed or isinstance(m, _MOVES) for m, _ in mods):
            continue  # it reaches the piece's input or output, or passes an op that moves channels
        seen = list(dict.fromkeys((m, o) for m, o in mods if m in inside))
        roots = [m for m, o in seen if o and isinstance(m, ROOTS)]
        if not roots:
            continue
        root = min(roots, key=order.__getitem__)
        graphs.graph_of[root] = graph
        members = tuple(Member("block", names[m], "out" if o else "in") for m, o in seen)
        out.append((GroupInfo(names[root], members, graph.get_pruner_of_module(root).get_out_channels(root),
                              "internal", False, channel_groups(group)), root))
    return out


def _calls(block: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """{module: (input shape, output shape)} of every module the block calls once on one tensor."""
    seen: dict[nn.Module, list] = {}

    def hook(m, args, output):
        ok = len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor)
        seen.setdefault(m, []).append((tuple(args[0].shape[1:]), tuple(output.shape[1:])) if ok else None)

    run_hooked(block, input_shape, hook, [m for m in block.modules() if m is not block])
    return {m: v[0] for m, v in seen.items() if len(v) == 1 and v[0] is not None}


