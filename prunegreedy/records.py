"""The run folder: resolved config, per-(stage, phase) rows, checkpoints, log. Atomic writes.

    <run>/config.yaml          the resolved config (enough to rerun)
    <run>/run.json             status, dataset meta (classes, mean, std), versions, final metrics
    <run>/stages.csv           one row per (stage, phase)
    <run>/log.txt              what the console showed
    <run>/checkpoints/stage-J.{json,safetensors}   architecture spec + weights after stage J
    <run>/model.{json,safetensors}                 the latest finished network (blocks + heads)

Files are written atomically (prunegreedy.fileio).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from .errors import RunError, SpecError
from .fileio import atomic_write, read_json, write_json, write_text
from .nn.net import build_from_spec

RUN_FILE = "run.json"
SENSITIVITY_FILE = "sensitivity.csv"  # runs that decide from held-out data (trainers.decisions)


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


class RunLock:
    """An OS lock (flock) on the run folder itself, held while a process writes the folder.

    The kernel drops it when the process ends, however it ends, so a killed run never leaves a
    stale lock behind, and no lock file is added to the folder. The holder names itself in
    run.json ("writer") so that a refused second process can say who holds the folder.
    """

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def acquire(cls, run: Path) -> "RunLock":
        """Take the lock or raise RunError naming the process that holds it."""
        try:
            fd = os.open(run, os.O_RDONLY)
        except OSError as e:
            raise RunError(f"cannot lock run folder {run}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"{run} is in use by {cls.holder(run)}; wait for it to end or stop it") from None
        return cls(fd)

    @staticmethod
    def holder(run: Path) -> str:
        try:
            return str(json.loads((Path(run) / RUN_FILE).read_text())["writer"])
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    @classmethod
    def check_free(cls, run: Path) -> None:
        """Raise RunError if another process holds the lock of an existing run folder."""
        if Path(run).is_dir():
            cls.acquire(run).release()

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


class RunDir:
    """A run folder being written by the pipeline."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ckpt = self.path / "checkpoints"
        self._log = None
        self._lock: RunLock | None = None
        self._writer: str | None = None

    def hold(self) -> None:
        """Lock the folder for this process until it ends (RunLock); a second writer is refused."""
        if self._lock is None:
            self._lock = RunLock.acquire(self.path)
            self._writer = f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        write_json(self.path / RUN_FILE, {**meta, "writer": self._writer} if self._writer else meta)

    def write_stages(self, rows: list[dict]) -> None:
        text = pd.DataFrame(rows).to_csv(index=False)
        write_text(self.path / "stages.csv", text)

    def write_table(self, name: str, rows: list[dict]) -> None:
        """Another CSV of the run (e.g. sensitivity.csv), one row per dict."""
        write_text(self.path / name, pd.DataFrame(rows).to_csv(index=False))

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
        scalars["cut"] = state.get("cut")  # a cut made inside the schedule: its filters and rows, replayed on resume
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

    write_config = write_meta = write_stages = write_table = save_checkpoint = save_partial = clear_partial = log = hold = release = _skip
