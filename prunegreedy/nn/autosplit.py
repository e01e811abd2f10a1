"""A default split for any network: its stages end where the traced feature map shrinks.

`auto_split(model, (3, 32, 32), stages=4)` traces the model with torch.fx into its own forward and
every nn.Sequential (any other module is called as a whole, so a residual block is never cut
inside), runs the trace once on a zero image and takes as cut points the modules after which
nothing earlier is read again: there the network runs in sequence. Among them, with parameters
and giving a map (C, H, W) before the classifier (the last layer with parameters), the last one
at each spatial resolution ends a stage; with more resolutions than `stages`, the last ones merge
into the last stage. A cut point that is the last module of its Sequential is named by the
Sequential (`layer1`, not `layer1.1`) where no other cut point lies inside it.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import ConfigError
from .split import eval_mode


class _SequentialTracer(fx.Tracer):
    """Traces into the model's forward and into every nn.Sequential; any other module is one call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, nn.Sequential)


def auto_split(model: nn.Module, input_shape: tuple[int, ...], stages: int = 4) -> list[str]:
    """The module names that end each stage (at most `stages`) of a model taking `input_shape`."""
    name = type(model).__name__
    if stages < 1:
        raise ConfigError(f"model.stages must be at least 1, got {stages}")
    try:
        graph = _SequentialTracer().trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ... by construct
        raise ConfigError(f"torch.fx cannot trace {name} to find its stages ({type(e).__name__}: "
                          f"{_first(e)}); give its stages with --split") from None
    gm = fx.GraphModule(model, graph)
    p = next(model.parameters(), None)
    if p is None:
        raise ConfigError(f"{name} has no parameters: there is nothing to train")
    try:
        with torch.no_grad(), eval_mode(gm):
            _Shapes(gm).run(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    except Exception as e:  # the network refuses an input of this size, or its forward is not a plain one
        raise ConfigError(f"{name} does not run on a {'x'.join(map(str, input_shape))} input ({type(e).__name__}: "
                          f"{_first(e)})") from None
    cuts = _cut_points(gm)
    ends, res = [], None  # the last cut point with parameters at each resolution, in forward order
    for node, weighted in cuts:
        side = node.meta["shape"][2:]
        if weighted and side != res:
            ends.append(node)
            res = side
        elif ends and side == res and (weighted or _parent(node) == _parent(ends[-1])):
            ends[-1] = node  # or, without parameters, a module beside it (the ReLU after a BN) ends the stage
    if not ends:
        raise ConfigError(f"{name} has no module with parameters after which its forward runs in sequence "
                          f"before its classifier; give its stages with --split")
    ends = ends[:stages - 1] + ends[-1:] if len(ends) > stages else ends
    return _names(model, [str(n.target) for n in ends])


class _Shapes(fx.Interpreter):
    """Runs the trace once and keeps every tensor's shape in its node's meta["shape"]."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        return result


def _cut_points(gm: fx.GraphModule) -> list[tuple[fx.Node, bool]]:
    """(module call, whether the module has parameters): each the only call of its module, giving a
    4-D map, before the classifier, after which no earlier value is read again."""
    nodes = list(gm.graph.nodes)
    modules = dict(gm.named_modules())
    calls = [n for n in nodes if n.op == "call_module"]
    count = {t: sum(1 for n in calls if n.target == t) for t in {n.target for n in calls}}
    weighted = [n for n in calls if next(modules[n.target].parameters(), None) is not None]
    if not weighted:
        return []
    weighted = set(weighted)
    classifier = max(nodes.index(n) for n in weighted)
    free = set()  # parameters and what is computed from them alone: no stage boundary is crossed by them
    last_use = {}
    for i, n in enumerate(nodes):
        if n.op == "get_attr" or (n.op in ("call_function", "call_method") and n.all_input_nodes
                                  and all(a in free for a in n.all_input_nodes)):
            free.add(n)
        for a in n.all_input_nodes:
            last_use[a] = i
    out, reach = [], 0  # reach: the furthest use of anything before node i
    for i, n in enumerate(nodes):
        if i >= classifier:
            break
        if n.op == "call_module" and count[n.target] == 1 and reach <= i and len(n.meta.get("shape", ())) == 4:
            out.append((n, n in weighted))
        if n not in free:
            reach = max(reach, last_use.get(n, i))
    return out


def _names(model: nn.Module, names: list[str]) -> list[str]:
    """Each name, or the Sequential it ends (repeatedly), where no other name lies inside that one."""
    modules = dict(model.named_modules())
    out = []
    for k, name in enumerate(names):
        while "." in name:
            parent, _, child = name.rpartition(".")
            container = modules[parent]
            others = [m for j, m in enumerate(names) if j != k]
            if not isinstance(container, nn.Sequential) or list(container._modules)[-1] != child \
                    or any(o == parent or o.startswith(parent + ".") for o in others + out):
                break
            name = parent
        out.append(name)
    return out


def _parent(node: fx.Node) -> str:
    return str(node.target).rpartition(".")[0]


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
