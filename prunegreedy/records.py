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

import dataclasses
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from .errors import RunError, SpecError
from .fileio import atomic_write, read_json
from .train.loop import LoopState

RUN_FILE = "run.json"
SENSITIVITY_FILE = "sensitivity.csv"  # runs that decide from held-out data (trainers.decisions)


def read_saved(stem: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON spec and the safetensors weights of `stem`, nothing built (any architecture)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_json(stem.with_suffix(".json"))
    weights = stem.with_suffix(".safetensors")
    if not weights.exists():
        raise RunError(f"missing file {weights}")
    try:
        return spec, load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{weights} is not a valid safetensors file ({e})") from None


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Load weights that must match the rebuilt network exactly: every name, every shape."""
    expected = net.state_dict()
    if set(state) != set(expected):
        raise SpecError(f"{weights} does not match its spec: tensors {sorted(set(state) ^ set(expected))[:3]} differ")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise SpecError(f"{weights} does not match its spec: {name} has shape {tuple(t.shape)}, "
                            f"spec says {tuple(expected[name].shape)}")
    # safetensors keeps no module versions; the rebuilt network's own are the saved one's (MNASNet
    # refuses a state dict without its version)
    state = type(expected)(state)
    state._metadata = getattr(expected, "_metadata", None)
    net.load_state_dict(state)


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

    @staticmethod
    def held(run: Path) -> bool:
        """Whether a live process holds the run folder (its lock dies with it, rank 0 under torchrun
        included). Asked with a shared lock, taken and dropped at once: it never waits."""
        try:
            fd = os.open(run, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


STOPPED = "stopped"  # run.json says running, but no process holds the folder: it died without a word


def live_status(run: Path, status: str | None) -> str | None:
    """The status run.json gives, except that a run no process holds any more is not running but stopped
    (killed, out of memory, its machine gone): `report`, `Run.status` and `--resume` read this."""
    return STOPPED if status == "running" and not RunLock.held(Path(run)) else status


# Keys of run.json that are written only once they have a value (as every run.json had them).
_OPTIONAL = ("trainer", "resumed", "sensitivity", "budget", "error", "seconds", "final_acc", "head_accs", "params",
             "macs", "params_with_head", "macs_with_head", "widths", "planned", "final_acc_tta")


@dataclass
class RunMeta:
    """run.json: what the run is, where it stands, and (once finished) what it reached."""
    status: str
    started: str
    versions: dict
    device: str
    processes: int
    amp: str
    dataset: dict
    plan: str
    stages_done: int = 0
    trainer: str | None = None
    seconds_done: float = 0.0  # training seconds so far, across resumes
    removed_filters: dict = field(default_factory=dict)  # {stage: filter indices cut}
    resumed: int | None = None
    sensitivity: dict | None = None
    budget: dict | None = None
    error: str | None = None
    seconds: float | None = None
    final_acc: float | None = None
    final_acc_tta: float | None = None  # the same network's test accuracy with test-time augmentation (train.tta)
    ensemble_acc: float | None = None
    head_accs: list | None = None
    params: int | None = None
    macs: int | None = None
    params_with_head: int | None = None
    macs_with_head: int | None = None
    widths: list | None = None
    planned: dict | None = None  # what the run planned before training (trainers.plan_table); `plan` is its name

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if not self.removed_filters:
            del out["removed_filters"]
        if self.status != "finished":
            del out["ensemble_acc"]
        return {k: v for k, v in out.items() if not (k in _OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, data: dict) -> "RunMeta":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class RunRecord:
    """The one writer of a run folder: run.json, stages.csv, other tables, checkpoints, partial state
    and log.txt, and the run's status (running, interrupted, failed, finished) and seconds.

    Every write goes through `_write`; a record opened with `writes=False` (torchrun ranks other
    than 0) writes nothing, whatever method is called."""

    def __init__(self, path: Path, meta: RunMeta, rows: list[dict] | None = None, writes: bool = True):
        self.path = Path(path)
        self.ckpt = self.path / "checkpoints"
        self.meta = meta
        self.rows: list[dict] = rows or []
        self.writes = writes
        self._since = time.perf_counter()
        self._seconds_before = float(meta.seconds_done)
        self._lock: RunLock | None = None
        self._writer: str | None = None

    # -- the folder ------------------------------------------------------------------------------
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
    def make_folder(cls, path: Path) -> None:
        """Make a fresh run folder (see ensure_free)."""
        path = Path(path)
        cls.ensure_free(path)
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create run folder {path}: {e.strerror}") from None

    @classmethod
    def open(cls, path: Path, writes: bool = True) -> "RunRecord":
        """The record of an existing run, with the rows of its finished stages only (the rows of
        an interrupted stage are made again when it is)."""
        path = Path(path)
        if not cls.is_run(path):
            raise RunError(f"{path} is not a run folder (no run.json)")
        meta = RunMeta.from_json(read_json(path / RUN_FILE))
        rows = []
        if (path / "stages.csv").exists() and meta.stages_done:
            rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                    for r in pd.read_csv(path / "stages.csv").to_dict("records") if r["stage"] <= meta.stages_done]
        meta.removed_filters = {k: v for k, v in meta.removed_filters.items() if int(k) <= meta.stages_done}
        return cls(path, meta, rows, writes)

    def hold(self) -> None:
        """Lock the folder for this process until it ends (RunLock); a second writer is refused."""
        if self.writes and self._lock is None:
            self._lock = RunLock.acquire(self.path)
            self._writer = f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write(self, path: Path, data: bytes | str) -> None:
        if not self.writes:
            return
        blob = data.encode() if isinstance(data, str) else data
        atomic_write(path, lambda f: f.write(blob))

    # -- the status ------------------------------------------------------------------------------
    def seconds(self) -> float:
        """Seconds of this run so far, across resumes."""
        return self._seconds_before + time.perf_counter() - self._since

    def set_status(self, status: str, error: str | None = None) -> None:
        self.meta.status = status
        if error is not None or status == "running":  # a resumed run no longer carries what stopped it
            self.meta.error = error
        if status != "finished":
            self.meta.seconds_done = round(self.seconds(), 2)
        self.write_meta()

    def finish(self, **metrics) -> None:
        for k, v in metrics.items():
            setattr(self.meta, k, v)
        self.meta.seconds = round(self.seconds(), 2)
        self.set_status("finished")

    def write_meta(self) -> None:
        meta = self.meta.to_json()
        if self._writer:
            meta["writer"] = self._writer
        self._write(self.path / RUN_FILE, json.dumps(meta, indent=2, sort_keys=False) + "\n")

    # -- tables ----------------------------------------------------------------------------------
    def write_config(self, cfg_dict: dict) -> None:
        self._write(self.path / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))

    def add_rows(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self._write(self.path / "stages.csv", pd.DataFrame(self.rows).to_csv(index=False))

    def removed(self, stage: int, filters) -> None:
        """The filters a cut removed from `stage` (1-based): a list, or {block: list}."""
        self.meta.removed_filters[str(stage)] = filters

    def write_table(self, name: str, rows: list[dict]) -> None:
        """Another CSV of the run (e.g. sensitivity.csv), one row per dict."""
        self._write(self.path / name, pd.DataFrame(rows).to_csv(index=False))

    def log(self, line: str) -> None:
        if self.writes:
            with open(self.path / "log.txt", "a") as f:
                f.write(line.rstrip("\n") + "\n")

    # -- checkpoints -----------------------------------------------------------------------------
    def save_stage(self, stage: int, net: torch.nn.Module, spec: dict, probs: torch.Tensor) -> None:
        """Weights + spec after `stage`, its head's test softmax (the ensemble needs it on resume),
        and run.json saying the stage is done."""
        from safetensors.torch import save

        self._write(self.ckpt / f"stage-{stage}.probs.safetensors", save({"probs": probs.contiguous()}))
        for stem in (self.ckpt / f"stage-{stage}", self.path / "model"):
            self._write(stem.with_suffix(".safetensors"), save(_cpu_state(net)))
            self._write(stem.with_suffix(".json"), json.dumps(spec, indent=2) + "\n")
        self.meta.stages_done = stage
        self.meta.seconds_done = round(self.seconds(), 2)
        self.write_meta()
        if self.writes:
            self._partial(stage).unlink(missing_ok=True)

    def read_stage(self, stage: int) -> tuple[dict, dict[str, torch.Tensor], list[torch.Tensor]]:
        """The spec, weights and test softmax saved after `stage`, for a trainer to rebuild itself."""
        spec, state = read_saved(self.ckpt / f"stage-{stage}")
        return spec, state, self.load_probs(stage)

    def load_probs(self, stage: int) -> list[torch.Tensor]:
        """The test softmax of stages 1..stage."""
        from safetensors.torch import load_file

        probs = []
        for j in range(1, stage + 1):
            path = self.ckpt / f"stage-{j}.probs.safetensors"
            if not path.exists():
                raise RunError(f"missing file {path}; the run cannot be resumed")
            probs.append(load_file(path)["probs"])
        return probs

    def save_partial(self, stage: int, modules: dict[str, torch.nn.Module], state: LoopState) -> None:
        """The loop state of a stage in training and its modules' weights, as one file so it is never
        half-updated."""
        from safetensors.torch import save

        tensors, scalars = state.to_saved()
        for name, m in modules.items():
            tensors.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
        self._write(self._partial(stage), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                               metadata={"state": json.dumps(scalars)}))
        self.meta.seconds_done = round(self.seconds(), 2)
        self.write_meta()

    def load_partial(self, stage: int) -> tuple[dict[str, dict], LoopState] | None:
        """({module name: state dict}, loop state) saved by save_partial, or None."""
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
        weights: dict[str, dict] = {}
        for k, v in tensors.items():
            name, _, key = k.partition(".")
            if key and name not in ("momentum", "lookahead"):
                weights.setdefault(name, {})[key] = v
        return weights, LoopState.from_saved(tensors, scalars)

    def save_weights(self, name: str, net: torch.nn.Module) -> None:
        """A module's weights as checkpoints/NAME.safetensors (what a trainer needs again on resume)."""
        from safetensors.torch import save

        self._write(self.ckpt / f"{name}.safetensors", save(_cpu_state(net)))

    def read_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The weights save_weights kept as NAME."""
        from safetensors.torch import load_file

        path = self.ckpt / f"{name}.safetensors"
        if not path.exists():
            raise RunError(f"missing file {path}; the run cannot be resumed")
        return load_file(path)

    def _partial(self, stage: int) -> Path:
        return self.ckpt / f"partial-stage-{stage}.safetensors"


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
