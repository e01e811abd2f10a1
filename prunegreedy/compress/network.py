"""A network cut into stages and pruned, described as how to build it again.

The spec of a trained model says how to build the unpruned network (a registered name and its
arguments, or only its class name and shapes for a module the caller must hand back), where its
stages end, each stage's aux head, and what each stage's cut removed (compress.graph records).
`rebuild` builds the original, cuts it stage by stage exactly as training did and returns the
caller's own class, pruned, ready for its safetensors weights: nothing is unpickled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from ..nn.models import build_model
from ..nn.net import make_head
from ..nn.spec import StageSpec
from ..nn.split import split_stages, stage_shapes
from .graph import replay

KIND = "prunegreedy-network"
USER = "user:"  # arch of a module the caller passed: rebuilt only onto the instance they pass again


@dataclass
class Staged:
    """The model, its stages (sharing its modules), and each stage's head: an aux head, or the
    model's own tail (the last stage with last_head "own")."""
    model: nn.Module
    stages: list[nn.Module]
    heads: list[nn.Module]  # of the stages trained so far
    tail: nn.Module | None = None  # what follows the last stage in the model's forward

    def aux_heads(self, own_last: bool) -> nn.ModuleDict:
        last = len(self.stages) - 1
        return nn.ModuleDict({str(j): h for j, h in enumerate(self.heads) if not (own_last and j == last)})

    def saved(self, own_last: bool) -> nn.Module:
        """What a checkpoint holds: the whole model (untrained stages too) and the aux heads."""
        return nn.ModuleDict({"model": self.model, "heads": self.aux_heads(own_last)})


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's and buffer's shape: how a spec recognises the architecture it was made on."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def head_settings(name: str, pool: int | None) -> dict:
    """How every aux head of a run is built (model.head, model.head_pool), as its spec keeps it."""
    d = StageSpec(width=1)
    return {"type": name, "k": d.k, "hidden": d.head_width, "in_pool": pool}


def head_for(settings: dict, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A stage's aux head on an output of `shape`, by the head's registered name (nn.heads.HEADS)."""
    stage = StageSpec(width=shape[0], head=settings["type"], k=settings["k"], head_width=settings["hidden"],
                      head_pool=settings["in_pool"])
    return make_head(shape[0], stage, num_classes, tuple(shape[1:]))


def downstream(stages: list[nn.Module], j: int) -> nn.Module:
    """What reads stage j's output in a network trained end-to-end, to trace a cut of stage j: the
    stages after it (Torch-Pruning offers no channels of a tensor the traced module returns)."""
    return nn.Sequential(*stages[j + 1:])


def check_same(model: nn.Module, spec: dict) -> None:
    """Refuse a model of another architecture than the one the spec was trained on, before any cut."""
    want, have = spec["shapes"], shapes(model)
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise SpecError(f"the model given is not the {spec['class']} this network was trained as: "
                            f"'{key}' is {have.get(key)} in it, {want.get(key)} in the spec")


def rebuild(spec: dict, model: nn.Module | None = None) -> tuple[Staged, bool]:
    """(the pruned network, whether its last stage kept the model's own tail), weights not loaded."""
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise SpecError(f"not the spec of a whole network trained as model.arch (kind '{KIND}'); the network of "
                        f"a plan loads with prunegreedy.load_model")
    arch, args = spec["arch"], spec["args"]
    if model is None:
        if arch.startswith(USER):
            raise SpecError(f"{spec['class']} is not a registered model; pass a fresh, unpruned instance "
                            f"as model= to load it")
        torch.manual_seed(0)  # the weights are loaded over it; a fixed seed keeps building cheap and alike
        model = build_model(arch, args["num_classes"], args["image_size"])
    check_same(model, spec)
    stages, tail = split_stages(model, spec["split"])
    own = spec["last_head"] == "own" and tail is not None
    shape, heads = tuple(spec["input_shape"]), []
    for j, cut in enumerate(spec["pruning"]):  # the stages trained so far, in order
        stage = stages[j]
        out = stage_shapes([stage], shape)[0]
        nxt = stages[j + 1] if j + 1 < len(stages) else None
        if own and j == len(stages) - 1:
            head = probe = tail
        elif str(j) in spec["heads"]:
            head = probe = head_for(spec["heads"][str(j)], out, args["num_classes"])
        else:  # trained without a head of its own (end-to-end)
            head, probe, nxt = nn.Identity(), downstream(stages, j), None
        if cut:
            replay(stage, probe, nxt, shape, cut)
        heads.append(head)
        shape = stage_shapes([stage], shape)[0]
    return Staged(model, stages, heads, tail), own
