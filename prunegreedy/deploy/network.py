"""Load a trained network (a run folder, a checkpoint, or its native export) back as the user's
own class, pruned.

    net = prunegreedy.load_network("runs/r20")                      # a registered network, by name
    net = prunegreedy.load_network("runs/mine", model=MyNet())      # your own module: a fresh instance
    net = prunegreedy.load_network("exports/r20")                   # a native export: BatchNorm folded

The run's model.json says how to build the unpruned network and what every stage's cut removed;
the original is built (or the instance given is checked against it), every stage is made and cut
in order (compress.network.rebuild) and model.safetensors is loaded, whose names and shapes must
then match exactly. Nothing is unpickled, and a torchvision ResNet comes back as torchvision's
ResNet with narrower layers. Run folders written before this spec are read by deploy.legacy.

An export folds every BatchNorm that reads one conv's output alone (found by a torch.fx trace of
the whole model) into that conv, in place: the conv gains a bias and the BN becomes nn.Identity,
so the export is still the user's class and forward. Loading it replays the same steps on the
rebuilt original (build, cut, fold) before its weights are read.
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..compress.network import checkpoint_module, rebuild
from ..errors import ExportError, SpecError
from ..nn.network import Network, user_network
from ..nn.split import split_stages, stage_shapes
from ..records import load_weights, read_saved
from .backbone import SPEC_FILE, artifact, read_export_spec
from .fold import conv_bn_pairs, fold_any_head, fold_pairs
from .legacy import is_legacy, migrate


def _stem(path: Path) -> Path:
    """A run folder (its model.*), or a checkpoint stem (checkpoints/stage-J) with or without suffix."""
    path = Path(path)
    if path.is_dir():
        return path / "model"
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def load_network(path: str | Path, model: nn.Module | list[nn.Module] | None = None, heads: bool = False,
                 ) -> nn.Module | tuple[nn.Module, list[nn.Module]]:
    """The trained, pruned network in eval mode, with its classifier: the model itself where it
    kept its own, else its stages then the last head (with `heads`: the model and every stage's
    head instead). `model`: a fresh, unpruned instance of the module trained, needed for one that
    is not registered; it is pruned and loaded in place. `path` may also be a native export
    folder: then the network as exported, BatchNorm folded."""
    if model is not None:
        model = user_network(model)[0]
    if Path(path).is_dir() and (Path(path) / SPEC_FILE).exists():
        if heads:
            raise ExportError(f"{path} is an export: it holds the network and its last head only; heads= applies "
                              f"to run folders")
        folder, spec = read_export_spec(path)
        return load_network_export(folder, spec, with_head=spec["head"] is not None, model=model)
    net, trained, _ = load_trained(path, model)
    return (net.model, trained) if heads else deployable(net, trained, with_head=True)


def load_trained(path: str | Path, model: nn.Module | None = None) -> tuple[Network, list[nn.Module], dict]:
    """(the trained network of a run folder or checkpoint stem, every trained stage's head, its
    spec), in eval mode."""
    stem = _stem(path)
    if not stem.with_suffix(".json").exists():
        raise SpecError(f"{path} holds no trained network (no {stem.with_suffix('.json').name})")
    spec, state = read_saved(stem)
    if is_legacy(spec):
        spec, state = migrate(spec, state)
    net, heads = rebuild(spec, model)
    load_weights(checkpoint_module(net, heads), state, stem.with_suffix(".safetensors"))
    net.model.eval()
    for h in heads:
        h.eval()
    return net, heads, spec


def fold_trained(net: Network, heads: list[nn.Module], spec: dict, pairs: list | None = None,
                 ) -> tuple[Network, list[nn.Module], list | None]:
    """A copy of the trained network with its BatchNorms folded (the pairs a trace finds, which must
    equal `pairs` when an export is reloaded), its stages cut again; the last aux head folded too."""
    net, heads = copy.deepcopy((net, heads))
    found = conv_bn_pairs(net.model)
    as_lists = None if found is None else [list(p) for p in found]
    if pairs is not None and as_lists != pairs:
        raise SpecError(f"the rebuilt {spec['class']} folds other BatchNorms than its export did "
                        f"({len(as_lists or [])} pairs, the export {len(pairs)})")
    fold_pairs(net.model, found or [])
    modules, tail = split_stages(net.model, [s.name for s in net.stages])
    for stage, module in zip(net.stages, modules):
        stage.module = module
    net.tail = tail
    if heads and len(heads) == len(net.stages):
        if net.own_tail:
            heads[-1] = tail
        else:
            size = stage_shapes(modules, tuple(spec["input_shape"]))[-1][1:]
            heads[-1] = fold_any_head(heads[-1], size)
    return net, heads, as_lists


def deployable(net: Network, heads: list[nn.Module], with_head: bool) -> nn.Module:
    """What a user runs: the model itself (its own forward and class) with its own classifier;
    otherwise the stages in sequence, then the last head if `with_head`."""
    if with_head and len(heads) < len(net.stages):
        raise ExportError("the run has not trained its last stage: there is no final head to export")
    if with_head and net.own_tail:
        return net.model
    return nn.Sequential(*net.modules_of(), *([heads[-1]] if with_head else []))


def load_network_export(folder: Path, spec: dict, with_head: bool = True, model: nn.Module | None = None) -> nn.Module:
    """A native export: build the original, cut it as trained, fold as exported, then load the
    safetensors weights (names and shapes must match); eval mode, no gradients."""
    if spec["format"] != "native":
        raise ExportError(f"{folder} holds a {spec['format']} export; only native exports load as modules")
    if with_head and spec["head"] is None:
        raise ExportError(f"{folder} was exported without a head (features only); export with --with-head")
    trained = spec["network"]
    net, heads = rebuild(trained, model)
    net, heads, _ = fold_trained(net, heads, trained, spec["folded"])
    stored = deployable(net, heads, spec["head"] is not None)
    weights = artifact(folder, spec)
    _, state = read_saved(weights.with_suffix(""))
    load_weights(stored, state, weights)
    out = stored if with_head else deployable(net, heads, False)
    out.export_spec = spec  # mean, std, classes and input_shape travel with the module
    return out.eval().requires_grad_(False)


def load_backbone(path: str | Path, with_head: bool = False) -> nn.Module:
    """A native export (folder or file in it) in eval mode: its features, or logits with `with_head`."""
    folder, spec = read_export_spec(path)
    return load_network_export(folder, spec, with_head)
