"""A network's stages cut one at a time, and the spec that says how to build the network again.

One cut of a stage for every trainer: through the dependency graph traced over the stage, its
head and the next stage's module where one exists already (prebuilt, or made ahead of time by
the decoupled and end-to-end trainers), scored on the stage and its head only. A made next stage
narrows its own input instead (psi hides the coupling from the trace).

The spec of a trained network (checkpoints, model.json, native exports) says how to build the
unpruned network (its registered name and arguments, or only its class name and shapes for a
module the caller must hand back), each stage's head, and what each stage's cut removed.
`rebuild` builds it, makes and cuts every stage exactly as training did, and returns the
network ready for its safetensors weights: nothing is unpickled.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from ..errors import SpecError
from ..measure.size import output_shape
from ..nn.heads import HEADS
from ..nn.network import OWN, USER, Network, build_network
from ..nn.spec import StageSpec, check_fields
from .graph import Agree, PruneRecord, prune_stage, replay

KIND = "prunegreedy-network"
# What network_spec writes and rebuild reads (besides kind).
SPEC_KEYS = ("arch", "class", "args", "split", "last_head", "input_shape", "shapes", "heads", "pruning")


def head_settings(spec: StageSpec) -> dict:
    """A stage's head as its spec keeps it."""
    return {"type": spec.head, "k": spec.k, "hidden": spec.head_width, "in_pool": spec.head_pool}


def check_head(settings: dict, j: int | str) -> None:
    """Refuse a stage's saved head settings that would not build (a tampered spec), as one SpecError."""
    if not isinstance(settings, dict):
        raise SpecError(f"head {j}: settings must be an object, got {settings!r}")
    check_fields(settings, {"type": str, "k": int, "hidden": int}, f"head {j}")
    if settings["type"] not in HEADS:
        raise SpecError(f"head {j}: unknown head type '{settings['type']}'; valid: {', '.join(HEADS)}")
    pool = settings.get("in_pool")
    if pool is not None and (type(pool) is not int or pool < 1):
        raise SpecError(f"head {j}: field 'in_pool' must be a positive integer or null, got {pool!r}")


def with_head(spec: StageSpec, settings: dict) -> StageSpec:
    return replace(spec, head=settings["type"], k=settings["k"], head_width=settings["hidden"],
                   head_pool=settings["in_pool"])


def next_of(net: Network, j: int) -> nn.Module | None:
    """The module a cut of stage j traces with: the next stage's, where it exists and the graph sees it."""
    nxt, _ = _next(net, j)
    return nxt


def _next(net: Network, j: int) -> tuple[nn.Module | None, Callable[[list[int]], None] | None]:
    """(the next stage's module to trace with, or its own input rule), as the network is now."""
    if j + 1 >= len(net.stages) or net.stages[j + 1].module is None:
        return None, None
    nxt = net.stages[j + 1]
    return (None, nxt.narrow_input) if nxt.made else (nxt.module, None)


def _narrow(narrow: Callable[[list[int]], None] | None, record: PruneRecord) -> None:
    if narrow is not None and record.cuts:
        if len(record.cuts) != 1:
            raise SpecError(f"a made stage's input narrows by one cut of the stage before it, got {len(record.cuts)}")
        narrow(list(record.cuts[0].removed))


def cut_stage(net: Network, j: int, head: nn.Module, in_shape: tuple[int, ...], ratio: float, importance: str,
              round_to: int = 1, scope: str = "internal", gradients: Callable[[], None] | None = None,
              agree: Agree = lambda x: x, widths: dict[str, int] | None = None) -> PruneRecord:
    """Cut stage j of `net` in place (see compress.graph.prune_stage), with its head and what reads it next."""
    nxt, narrow = _next(net, j)
    record = prune_stage(net.stages[j].module, head, nxt, in_shape, ratio, importance, round_to, scope,
                         gradients=gradients, agree=agree, widths=widths)
    _narrow(narrow, record)
    return record


def replay_stage(net: Network, j: int, head: nn.Module, in_shape: tuple[int, ...], record: PruneRecord | dict) -> None:
    """Cut stage j exactly as `record` says (a resumed stage, a rebuilt network)."""
    record = record if isinstance(record, PruneRecord) else PruneRecord.from_dict(record)
    nxt, narrow = _next(net, j)
    replay(net.stages[j].module, head, nxt, in_shape, record)
    _narrow(narrow, record)


def checkpoint_module(net: Network, heads: list[nn.Module]) -> nn.Module:
    """What a checkpoint holds: the whole model (untrained stages too) and the stages' own heads."""
    aux = {str(j): h for j, h in enumerate(heads) if not (net.stages[j].spec.head == OWN)}
    return nn.ModuleDict({"model": net.model, "heads": nn.ModuleDict(aux)})


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's and buffer's shape: how a spec recognises the architecture it was made on."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def network_spec(net: Network, dataset: dict) -> dict:
    """The spec of an untrained network (run.json's dataset section gives the data's facts)."""
    return {"kind": KIND, "arch": net.name, "class": type(net.model).__name__, "args": dict(net.args),
            "split": [s.name for s in net.stages], "last_head": OWN if net.own_tail else "aux",
            "input_shape": list(dataset["image_shape"]), "mean": dataset["mean"], "std": dataset["std"],
            "classes": dataset["classes"], "shapes": shapes(net.model), "heads": {}, "pruning": []}


def check_same(model: nn.Module, spec: dict) -> None:
    """Refuse a model of another architecture than the one the spec was trained on, before any cut."""
    want, have = spec["shapes"], shapes(model)
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise SpecError(f"the model given is not the {spec['class']} this network was trained as: "
                            f"'{key}' is {have.get(key)} in it, {want.get(key)} in the spec")


def fresh(spec: dict, model: nn.Module | None = None) -> Network:
    """The unpruned, untrained network a spec describes (or `model`, the caller's instance of it)."""
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise SpecError(f"not the spec of a network (kind '{KIND}')")
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise SpecError(f"a network spec needs {', '.join(SPEC_KEYS)}; this one lacks {', '.join(missing)}")
    if not isinstance(spec["heads"], dict):
        raise SpecError("a network spec's 'heads' must map stages to their head settings")
    for j, settings in spec["heads"].items():  # all of them before anything is built
        check_head(settings, j)
    arch, args = spec["arch"], dict(spec["args"])
    if model is None and arch.startswith(USER):
        raise SpecError(f"{spec['class']} is not a registered model; pass a fresh, unpruned instance as model= "
                        f"to load it")
    if model is not None:  # the caller's instance: its architecture before any split is tried on it
        check_same(model, spec)
    num_classes, image_size = args.pop("num_classes"), args.pop("image_size")
    torch.manual_seed(0)  # the weights are loaded over it; a fixed seed keeps building cheap and alike
    net = build_network(arch, num_classes, image_size, args, spec["split"], spec["last_head"], model)
    check_same(net.model, spec)
    return net


def rebuild(spec: dict, model: nn.Module | None = None) -> tuple[Network, list[nn.Module]]:
    """(the pruned network, every trained stage's head), weights not loaded: each stage made (if
    it is made) on the width the previous cut left, its head built, its cut replayed."""
    net = fresh(spec, model)
    shape, heads = tuple(spec["input_shape"]), []
    for j, cut in enumerate(spec["pruning"]):  # the stages trained so far, in order
        module = net.module(j, shape[0])
        out = output_shape(module, shape)
        if str(j) in spec["heads"]:
            head = net.head(j, out, with_head(net.stages[j].spec, spec["heads"][str(j)]))
        elif net.stages[j].spec.head == OWN:
            head = net.tail
        else:  # trained without a head of its own (end-to-end)
            head = nn.Identity()
        if cut:
            replay_stage(net, j, head, shape, cut)
        heads.append(head)
        shape = output_shape(module, shape)
    return net, heads
