"""Trained weights from a file into a network, never unpickled: a safetensors file, or a state dict
that torch.load reads with weights_only=True. A file that does not fit the network is refused in
one line that names what differs (the classes, the tensors missing or unexpected, a shape)."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{path} holds more than tensors and would need unpickling, which prunegreedy never does; "
                          f"save the model's state_dict() (safetensors.torch.save_file, or torch.save)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ConfigError(f"{path} is neither safetensors nor a torch state dict ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict (names to tensors); save the "
                          f"model's state_dict()")
    return state


def _classifier(model: nn.Module) -> str | None:
    """The name of the model's last Linear layer (its classifier, for the models prunegreedy takes)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Refuse weights that do not fit `model` (named `what`) exactly: every name, every shape."""
    expected = model.state_dict()
    fc = _classifier(model)
    key = f"{fc}.weight" if fc is not None else None
    if key in state and key in expected and state[key].ndim == 2 and state[key].shape[0] != expected[key].shape[0]:
        raise ConfigError(f"{path} holds weights for {state[key].shape[0]} classes; the data have "
                          f"{expected[key].shape[0]} ({key})")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise ConfigError(f"{path} does not match {what}: tensors {'; '.join(parts)}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ConfigError(f"{path} does not match {what}: {name} has shape {list(t.shape)} in the file, "
                              f"{list(expected[name].shape)} in the network")


def load_trained(model: nn.Module, path: str | Path, what: str) -> None:
    """Load the weights file at `path` into `model` (named `what`), after check_weights."""
    state = read_weights(path)
    check_weights(model, state, path, what)
    with torch.no_grad():
        model.load_state_dict(state)
