"""The run folder: resolved config, per-(stage, phase) rows, checkpoints, log. Atomic writes.

    <run>/config.yaml          the resolved config (enough to rerun)
    <run>/run.json             status, dataset meta (classes, mean, std), versions, final metrics
    <run>/stages.csv           one row per (stage, phase)
    <run>/log.txt              what the console showed
    <run>/checkpoints/stage-J.{json,safetensors}   architecture spec + weights after stage J
    <run>/model.{json,safetensors}                 the latest finished network (blocks + heads)

Every file is written to a temporary file, fsynced and renamed, so a crash never leaves a
half-written file behind for a later command to read.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pandas as pd
import torch
import yaml

from .errors import RunError, SpecError

RUN_FILE = "run.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temporary file, fsync, rename: readers see the old file or the new one.

    A failure (disk full, permissions) leaves the old file untouched and raises RunError.
    """
    path = Path(path)
    try:
        _atomic_write(path, write)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}; the previous version is untouched") from None


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON (damaged or tampered)") from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"missing file {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid YAML (damaged or tampered)") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a config mapping (damaged or tampered)")
    return data


def save_model(net: torch.nn.Module, spec: dict, stem: Path) -> None:
    """`stem.json` (architecture) + `stem.safetensors` (weights); no pickle."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(stem.with_suffix(".safetensors"), lambda f: f.write(save(state)))
    write_json(stem.with_suffix(".json"), spec)


def load_model(stem: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild from the JSON spec (validated first), then load weights that must match exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import build_from_spec

    spec = read_json(stem.with_suffix(".json"))
    net = build_from_spec(spec)
    weights = stem.with_suffix(".safetensors")
    if not weights.exists():
        raise RunError(f"missing file {weights}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{weights} is not a valid safetensors file ({e})") from None
    expected = net.state_dict()
    if set(state) != set(expected):
        raise SpecError(f"{weights} does not match its spec: tensors {sorted(set(state) ^ set(expected))[:3]} differ")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise SpecError(f"{weights} does not match its spec: {name} has shape {tuple(t.shape)}, "
                            f"spec says {tuple(expected[name].shape)}")
    net.load_state_dict(state)
    return net, spec


class RunDir:
    """A run folder being written by the pipeline."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ckpt = self.path / "checkpoints"
        self._log = None

    @staticmethod
    def is_run(path: Path) -> bool:
        return (Path(path) / RUN_FILE).exists()

    @classmethod
    def ensure_free(cls, path: Path) -> None:
        """Refuse a folder that holds a run or anything else: a new run never overwrites."""
        path = Path(path)
        if cls.is_run(path):
            raise RunError(f"{path} already holds a run; choose another --out or --name")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"{path} exists and is not an empty folder; choose another --out or --name")

    @classmethod
    def create(cls, path: Path) -> "RunDir":
        """Make a fresh run folder (see ensure_free)."""
        path = Path(path)
        cls.ensure_free(path)
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create run folder {path}: {e.strerror}") from None
        return cls(path)

    def write_config(self, cfg_dict: dict) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))

    def write_meta(self, meta: dict) -> None:
        write_json(self.path / RUN_FILE, meta)

    def write_stages(self, rows: list[dict]) -> None:
        text = pd.DataFrame(rows).to_csv(index=False)
        write_text(self.path / "stages.csv", text)

    def save_checkpoint(self, net: torch.nn.Module, spec: dict, stage: int, probs: torch.Tensor) -> None:
        """Weights + spec after `stage`, and its head's test softmax (the ensemble needs it on resume)."""
        from safetensors.torch import save

        blob = save({"probs": probs.contiguous()})
        atomic_write(self.ckpt / f"stage-{stage}.probs.safetensors", lambda f: f.write(blob))
        save_model(net, spec, self.ckpt / f"stage-{stage}")
        save_model(net, spec, self.path / "model")

    def save_partial(self, stage: int, block: torch.nn.Module, head: torch.nn.Module, state: dict) -> None:
        """End-of-epoch state of a stage in training, as one file so it is never half-updated."""
        from safetensors.torch import save

        tensors = {f"block.{k}": v for k, v in block.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        tensors["generator"] = state["generator"]
        tensors.update({f"momentum.{i}": m for i, m in enumerate(state["momentum"]) if m is not None})
        scalars = {k: state[k] for k in ("step", "loss_sum", "correct", "seen", "seconds")}
        scalars["momentum_count"] = len(state["momentum"])
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                    metadata={"state": json.dumps(scalars)})
        atomic_write(self._partial(stage), lambda f: f.write(blob))

    def load_partial(self, stage: int) -> tuple[dict, dict, dict] | None:
        """(block state, head state, loop state) saved by save_partial, or None."""
        from safetensors import safe_open

        path = self._partial(stage)
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                scalars = json.loads(f.metadata()["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:
            raise RunError(f"{path} is damaged; delete it to restart stage {stage} from its beginning") from None
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        n = scalars.pop("momentum_count")
        state = {**scalars, "generator": tensors["generator"],
                 "momentum": [tensors.get(f"momentum.{i}") for i in range(n)]}
        return part("block."), part("head."), state

    def clear_partial(self, stage: int) -> None:
        self._partial(stage).unlink(missing_ok=True)

    def _partial(self, stage: int) -> Path:
        return self.ckpt / f"partial-stage-{stage}.safetensors"

    def load_probs(self, stage: int) -> torch.Tensor:
        from safetensors.torch import load_file

        path = self.ckpt / f"stage-{stage}.probs.safetensors"
        if not path.exists():
            raise RunError(f"missing file {path}; the run cannot be resumed")
        return load_file(path)["probs"]

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a") as f:
            f.write(line.rstrip("\n") + "\n")


class ReadOnlyRunDir(RunDir):
    """The run folder as ranks other than 0 see it under torchrun: read (resume), never written."""

    def _skip(self, *args, **kwargs) -> None:
        return None

    write_config = write_meta = write_stages = save_checkpoint = save_partial = clear_partial = log = _skip
