"""Load a trained whole network (a model.arch run) back as the user's own class, pruned.

    net = prunegreedy.load_network("runs/r20")                      # a registered model, by name
    net = prunegreedy.load_network("runs/mine", model=MyNet())      # your own module: a fresh instance

The run's model.json says how to build the unpruned network and what every stage's cut removed;
the original is built (or the instance given is checked against it), the cuts are replayed in
order and model.safetensors is loaded, whose names and shapes must then match exactly. Nothing is
unpickled, and a torchvision ResNet comes back as torchvision's ResNet with narrower layers.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..compress.network import rebuild
from ..errors import SpecError
from ..records import load_weights, read_saved


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
    of the module trained, needed for one that is not registered; it is pruned and loaded in place."""
    stem = _stem(path)
    if not stem.with_suffix(".json").exists():
        raise SpecError(f"{path} holds no trained network (no {stem.with_suffix('.json').name})")
    spec, state = read_saved(stem)
    if isinstance(model, (list, tuple)):
        model = nn.Sequential(*model)
    staged, own = rebuild(spec, model)
    load_weights(staged.saved(own), state, stem.with_suffix(".safetensors"))
    staged.model.eval()
    for h in staged.heads:
        h.eval()
    return (staged.model, staged.heads) if heads else staged.model
