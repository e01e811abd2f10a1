"""Cut any network whose forward runs its stages one after another into those stages.

`split_stages(model, ["layer1", "layer2", "layer3"])` traces the model with torch.fx, coarsely:
every module that does not contain a split name is a leaf, called as a whole, so only the path
down to the cut points is traced (a leaf may hold any Python the tracer could not follow). The
nodes up to and including the call of each split module make one stage; what follows the last
split (pooling, flatten, classifier) is the tail. Each stage is a `GraphModule` that holds the
model's own module objects under their qualified names (`stage.layer2 is model.layer2`), so
pruning a stage in place narrows the user's model, and names in a pruning record are the model's.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import fx, nn

from ..errors import ConfigError


class _CoarseTracer(fx.Tracer):
    """Traces only into modules that contain a split name; every other module stays one call."""

    def __init__(self, split: list[str]):
        super().__init__()
        self.split = split

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not any(s.startswith(qualname + ".") for s in self.split)


def split_stages(model: nn.Module | list[nn.Module], split: list[str] | None = None,
                 ) -> tuple[list[nn.Module], nn.Module | None]:
    """(stages, tail): each split name is the last module of a stage; the tail is what follows the
    last one (None when nothing does). A list of modules is already the stages (no tail)."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if split is not None:
            raise ConfigError("a list of modules is already split into stages; give no split")
        if not model or not all(isinstance(m, nn.Module) for m in model):
            raise ConfigError("stages given as a list must be a non-empty list of nn.Module")
        return list(model), None
    name = type(model).__name__
    _check_names(model, name, split)
    try:
        graph = _CoarseTracer(split).trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ... by construct
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"torch.fx cannot trace {name} ({type(e).__name__}: {first}); "
                          f"pass its stages as a list of modules instead") from None
    parts, inputs, ends = _partition(graph, split, name)
    modules = [_graph_module(model, nodes, inp, end, f"{name}Stage{k + 1}")
               for k, (nodes, inp, end) in enumerate(zip(parts, inputs, ends))]
    stages, tail = modules[:len(split)], modules[len(split)]
    for k, stage in enumerate(stages):
        if not any(True for _ in stage.parameters()):
            raise ConfigError(f"stage {k + 1} of {name} (ending at '{split[k]}') has no parameters: it would train "
                              f"nothing; end it at a later module")
    return stages, tail if parts[-1] else None


def _check_names(model: nn.Module, name: str, split: list[str] | None) -> None:
    if not split or not all(isinstance(s, str) for s in split):
        raise ConfigError(f"split must be a non-empty list of module names of {name}")
    known = dict(model.named_modules())
    for s in split:
        if not s or s not in known:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"'{s}' is not a module of {name}; its top-level modules: {top}")
    for i, s in enumerate(split):
        if s in split[:i]:
            raise ConfigError(f"'{s}' is named twice in the split of {name}")
        inner = next((t for t in split if t.startswith(s + ".")), None)
        if inner is not None:
            raise ConfigError(f"'{inner}' is inside '{s}' in the split of {name}; a split name ends a stage, "
                              f"so no split name may contain another")


def _partition(graph: fx.Graph, split: list[str], name: str):
    """The nodes of each stage and the tail, each part's input node and the value it returns."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ConfigError(f"{name}'s forward takes {len(inputs)} inputs; a network cut into stages takes one")
    ends = []
    for s in split:
        calls = [n for n in nodes if n.op == "call_module" and n.target == s]
        if len(calls) != 1:
            times = "never called" if not calls else f"called {len(calls)} times"
            raise ConfigError(f"'{s}' is {times} in {name}'s forward; a stage must end at a module that runs once")
        ends.append(calls[0])
    position = {n: i for i, n in enumerate(nodes)}
    bounds = [position[e] for e in ends]
    if bounds != sorted(bounds):
        order = [s for _, s in sorted(zip(bounds, split))]
        raise ConfigError(f"the split of {name} is out of forward order; in forward order: {', '.join(order)}")
    part = {inputs[0]: 0}
    free: set[fx.Node] = set()  # parameters read directly and what is computed from them alone: copied where used
    for i, n in enumerate(nodes):
        if n.op in ("get_attr", "call_function", "call_method") and all(a in free for a in n.all_input_nodes):
            free.add(n)
        elif n.op != "placeholder":
            part[n] = next((k for k, b in enumerate(bounds) if i <= b), len(split))
    feeds = [inputs[0], *ends]  # what part k may read from an earlier part
    where = [f"stage {k + 1}" for k in range(len(split))] + ["the tail"]
    for n, k in part.items():
        for a in n.all_input_nodes:
            if a not in free and part[a] < k and a is not feeds[k]:
                what = ("the model's input" if a is inputs[0] else
                        f"'{a.target if a.op == 'call_module' else a.name}' from {where[part[a]]}")
                raise ConfigError(f"{name}'s stages do not run in sequence: {where[k]} reads {what}, "
                                  f"not only the output of '{split[k - 1]}'")
    output = nodes[-1]
    parts = [[n for n in nodes if part.get(n) == k and n not in (output, inputs[0])] for k in range(len(split) + 1)]
    returns = [*ends, output.args[0]]
    return parts, feeds, returns


def _graph_module(model: nn.Module, nodes: list[fx.Node], inp: fx.Node, returns, class_name: str,
                  ) -> fx.GraphModule:
    g = fx.Graph()
    env = {inp: g.placeholder("x")}

    def value(a: fx.Node):  # a free node is copied into every part that reads it
        if a not in env:
            env[a] = g.node_copy(a, value)
        return env[a]

    for n in nodes:
        env[n] = g.node_copy(n, value)
    g.output(fx.map_arg(returns, value))
    # GraphModule(root, graph) installs the very module objects the nodes call, under their names
    return fx.GraphModule(model, g, class_name=class_name)


def check_feature_maps(stages: list[nn.Module], split: list[str], input_shape: tuple[int, ...], name: str,
                       tail: nn.Module | None = None) -> None:
    """Refuse a split that reaches past the network's last feature map (its classifier, or the
    pooling and flattening before it): every stage of an image network must give a map (C, H, W).
    Refuse a tail that does not give a tensor of class scores in training (GoogLeNet's aux logits)."""
    if tail is not None:
        _check_scores(tail, stage_shapes(stages, input_shape)[-1], name)
    if len(input_shape) != 3:
        return  # not an image network: nothing to say about maps
    for k, shape in enumerate(stage_shapes(stages, input_shape)):
        if len(shape) != 3:
            maps = [s for s, out in zip(split, stage_shapes(stages, input_shape)) if len(out) == 3]
            valid = f"the last that does: '{maps[-1]}'" if maps else "none of the split's modules does"
            raise ConfigError(f"'{split[k]}' in the split of {name} gives an output ({'x'.join(map(str, shape))}), "
                              f"not a feature map: a stage must end at or before the last feature map, "
                              f"never at the classifier ({valid})")


def _check_scores(tail: nn.Module, shape: tuple[int, ...], name: str) -> None:
    probe = copy.deepcopy(tail).train()  # a copy: training mode moves BatchNorm statistics
    p = next(probe.parameters(), None)
    with torch.no_grad():
        out = probe(torch.zeros(2, *shape, device=p.device if p is not None else None))
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{name}'s forward gives a {type(out).__name__} in training, not a tensor of class scores; "
                          f"give a model whose forward returns them (torchvision: aux_logits=False)")


def stage_shapes(stages: list[nn.Module], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Each stage's output shape (without the batch) for one input of input_shape, by a forward pass
    in eval mode (BatchNorm statistics do not move); every module's own mode is restored."""
    shapes, shape = [], tuple(input_shape)
    for stage in stages:
        p = next(stage.parameters(), None)
        x = torch.zeros(1, *shape, device=p.device if p is not None else None)
        with torch.no_grad(), _eval(stage):
            shape = tuple(stage(x).shape[1:])
        shapes.append(shape)
    return shapes


@contextlib.contextmanager
def _eval(module: nn.Module):
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


eval_mode = _eval  # for the other modules of nn (train.modes is above nn)
