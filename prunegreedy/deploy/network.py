"""Load a trained whole network (a model.arch run, or its native export) back as the user's own class, pruned.

    net = prunegreedy.load_network("runs/r20")                      # a registered model, by name
    net = prunegreedy.load_network("runs/mine", model=MyNet())      # your own module: a fresh instance
    net = prunegreedy.load_network("exports/r20")                   # a native export: BatchNorm folded

The run's model.json says how to build the unpruned network and what every stage's cut removed;
the original is built (or the instance given is checked against it), the cuts are replayed in
order and model.safetensors is loaded, whose names and shapes must then match exactly. Nothing is
unpickled, and a torchvision ResNet comes back as torchvision's ResNet with narrower layers.

An export of such a network folds every BatchNorm that reads one conv's output alone (found by a
torch.fx trace of the whole model) into that conv, in place: the conv gains a bias and the BN
becomes nn.Identity, so the export is still the user's class and forward. Loading it replays the
same steps on the rebuilt original (build, cut, fold) before its weights are read.
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..compress.network import Staged, rebuild
from ..errors import ExportError, SpecError
from ..nn.split import split_stages, stage_shapes
from ..records import load_weights, read_saved
from .backbone import SPEC_FILE, artifact, read_export_spec
from .fold import conv_bn_pairs, fold_any_head, fold_pairs


def _stem(path: Path) -> Path:
    """A run folder (its model.*), or a checkpoint stem (checkpoints/stage-J) with or without suffix."""
    path = Path(path)
    if path.is_dir():
        return path / "model"
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def load_network(path: str | Path, model: nn.Module | list[nn.Module] | None = None, heads: bool = False,
                 ) -> nn.Module | tuple[nn.Module, list[nn.Module]]:
    """The trained, pruned network in eval mode (with `heads`, also every stage's head: aux heads,
    and the model's own tail for a last stage that kept it). `model`: a fresh, unpruned instance
    of the module trained, needed for one that is not registered; it is pruned and loaded in place.
    `path` may also be a native export folder: then the network as exported, BatchNorm folded."""
    if isinstance(model, (list, tuple)):
        model = nn.Sequential(*model)
    if Path(path).is_dir() and (Path(path) / SPEC_FILE).exists():
        if heads:
            raise ExportError(f"{path} is an export: it holds the network and its last head only; heads= applies "
                              f"to run folders")
        folder, spec = read_export_spec(path)
        return load_network_export(folder, spec, with_head=spec["head"] is not None, model=model)
    staged, own, _ = load_staged(path, model)
    return (staged.model, staged.heads) if heads else staged.model


def load_staged(path: str | Path, model: nn.Module | None = None) -> tuple[Staged, bool, dict]:
    """(the trained network of a run folder or checkpoint stem with its stages and heads, eval mode;
    whether its last stage kept the model's own tail; its spec)."""
    stem = _stem(path)
    if not stem.with_suffix(".json").exists():
        raise SpecError(f"{path} holds no trained network (no {stem.with_suffix('.json').name})")
    spec, state = read_saved(stem)
    staged, own = rebuild(spec, model)
    load_weights(staged.saved(own), state, stem.with_suffix(".safetensors"))
    staged.model.eval()
    for h in staged.heads:
        h.eval()
    return staged, own, spec


def fold_staged(staged: Staged, own: bool, spec: dict, pairs: list | None = None) -> tuple[Staged, list | None]:
    """A copy of the trained network with its BatchNorms folded (the pairs a trace finds, which must
    equal `pairs` when an export is reloaded), cut into stages again; the last aux head folded too."""
    staged = copy.deepcopy(staged)
    found = conv_bn_pairs(staged.model)
    as_lists = None if found is None else [list(p) for p in found]
    if pairs is not None and as_lists != pairs:
        raise SpecError(f"the rebuilt {spec['class']} folds other BatchNorms than its export did "
                        f"({len(as_lists or [])} pairs, the export {len(pairs)})")
    fold_pairs(staged.model, found or [])
    stages, tail = split_stages(staged.model, spec["split"])
    heads = list(staged.heads)
    if heads and len(heads) == len(stages):
        if own:
            heads[-1] = tail
        else:
            size = stage_shapes(stages, tuple(spec["input_shape"]))[-1][1:]
            heads[-1] = fold_any_head(heads[-1], size)
    return Staged(staged.model, stages, heads, tail), as_lists


def exported_module(staged: Staged, own: bool, with_head: bool) -> nn.Module:
    """What an export of the network runs: the model itself (its own forward and class) with its
    own classifier; otherwise the stages in sequence, then the last aux head if `with_head`."""
    if with_head and len(staged.heads) < len(staged.stages):
        raise ExportError("the run has not trained its last stage: there is no final head to export")
    if with_head and own:
        return staged.model
    return nn.Sequential(*staged.stages, *([staged.heads[-1]] if with_head else []))


def load_network_export(folder: Path, spec: dict, with_head: bool = True, model: nn.Module | None = None) -> nn.Module:
    """A native export of a whole network: build the original, cut it as trained, fold as exported,
    then load the safetensors weights (names and shapes must match); eval mode, no gradients."""
    if spec["format"] != "native":
        raise ExportError(f"{folder} holds a {spec['format']} export; only native exports load as modules")
    if with_head and spec["head"] is None:
        raise ExportError(f"{folder} was exported without a head (features only); export with --with-head")
    net = spec["network"]
    staged, own = rebuild(net, model)
    staged, _ = fold_staged(staged, own, net, spec["folded"])
    stored = exported_module(staged, own, spec["head"] is not None)
    weights = artifact(folder, spec)
    _, state = read_saved(weights.with_suffix(""))
    load_weights(stored, state, weights)
    out = stored if with_head else exported_module(staged, own, False)
    out.export_spec = spec  # mean, std, classes and input_shape travel with the module
    return out.eval().requires_grad_(False)
