"""Data-parallel training under torchrun: `torchrun --nproc_per_node=N -m prunegreedy run ...`.

Each process trains the same stage on its share of every global batch; only the trainable
block + head are wrapped in DistributedDataParallel (the frozen prefix needs no gradients).
Rank 0 alone writes the run folder. Decisions that must match on every rank (which filters to
cut) are taken on rank 0 and broadcast, and the result is checked by a checksum on all ranks.
A single process is the same code with world = 1, where every method here is a no-op.

When another process of the run is gone (killed, crashed, or hanging past `dist.timeout`), the
collective that waits for it fails on every survivor; `PeerLost` is that failure as one line
(a RunError), raised by every collective made here and, for DistributedDataParallel's own
all-reduce inside backward(), by `Dist.guard()` around the training. torchrun ends the other
workers of a failed run with SIGTERM (then SIGKILL after 30 s): under torchrun, SIGTERM raises
PeerLost in the main thread, so a process stopped that way takes the same path (rank 0 marks the
run failed) instead of dying silently.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import PrunegreedyError, RunError


class PeerLost(RunError):
    """Another process of the run stopped or stopped answering; the message says what is known.
    `reason` is lost_reason()'s short form ("connection closed", "timeout", SIGTERM)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


SIGTERM = "SIGTERM"
# Once an error is on its way out of the run, a further SIGTERM (torchrun's) is ignored, so it cannot
# break into the failure path (marking the run failed, printing the one line); _lost: a peer is gone
# (or this process was told to stop), so the process group is left alone at the end.
_stopping = False
_lost = False

# (text in a torch.distributed error, what it means); the first match names the reason.
_LOST_TEXTS = (
    ("connection closed", "connection closed"),
    ("connection reset", "connection reset"),
    ("broken pipe", "connection closed"),
    ("connection refused", "connection refused"),
    ("got 0 bytes", "connection closed"),
    ("remote process exit", "remote process exited"),
    ("ncclremoteerror", "remote process exited"),
    ("application timeout", "timeout"),  # gloo: "Application timeout caused pair closure"
    ("timed out", "timeout"),
    ("timing out", "timeout"),
    ("timeout", "timeout"),
    ("communicator was aborted", "NCCL communicator aborted"),
    ("nccl error", "NCCL error"),
    ("ncclsystemerror", "NCCL error"),
    ("ncclinternalerror", "NCCL error"),
)
# A plain RuntimeError counts only if it comes from a distributed backend (gloo's carry its source path).
_BACKEND_TEXTS = ("gloo", "nccl", "c10d", "processgroup", "remote worker", "tcpstore", "pair closure")


def _stop() -> None:
    """From now on SIGTERM is ignored (SIG_IGN, which the interpreter keeps while it shuts down, so
    the process still exits with its own code), if the handler below is the one installed."""
    global _stopping
    _stopping = True
    if threading.current_thread() is threading.main_thread() and \
            getattr(signal.getsignal(signal.SIGTERM), "__func__", None) is Dist.on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def lost_reason(exc: BaseException | None) -> str | None:
    """What a torch.distributed error says about the other processes ("connection closed",
    "timeout", ...), or None if it is not such an error. Follows the chain of causes: a SIGTERM
    that broke into a failing collective gives way to the collective's own reason."""
    seen: set[int] = set()
    sigterm = False
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PeerLost):
            if e.reason != SIGTERM:
                return e.reason or str(e)
            sigterm = True
        elif isinstance(e, RuntimeError):
            text = str(e).lower()
            if isinstance(e, dist.DistError) or any(t in text for t in _BACKEND_TEXTS):
                for needle, reason in _LOST_TEXTS:
                    if needle in text:
                        return reason
                if isinstance(e, (dist.DistNetworkError, dist.DistStoreError)):
                    return "connection lost"
        e = e.__cause__ or e.__context__
    return SIGTERM if sigterm else None


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    timeout: float = 600.0  # seconds a collective waits for the other processes (dist.timeout)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        with self._collective():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        with self._collective():
            dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True only if `flag` holds on every rank (so every rank stops together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        with self._collective():
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def any_true(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag true if it holds on any rank (so every rank acts on it at the same step)."""
        if not self.enabled:
            return flags
        t = torch.tensor([1 if f else 0 for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sync_buffers(self, *modules: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere: each rank's last forward moved its own."""
        if not self.enabled:
            return
        with self._collective():
            for m in modules:
                for b in m.buffers():
                    dist.broadcast(b, src=0)

    def check_same(self, modules: list[nn.Module], what: str) -> float:
        """Checksum of the modules' weights and buffers; an error unless every rank has the same."""
        total = sum(float(t.detach().double().sum()) + t.numel() for m in modules
                    for t in list(m.parameters()) + list(m.buffers()))
        if self.enabled:
            sums: list[float] = [0.0] * self.world
            with self._collective():
                dist.all_gather_object(sums, total)
            if any(s != sums[0] for s in sums):
                raise RunError(f"{what} differ across ranks (checksums {sums})")
        return total

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
        with self._collective():  # DDP broadcasts rank 0's weights when it wraps
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run fn on rank 0; its result, or its user error, reaches every rank (none is left waiting)."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except PrunegreedyError as e:
                error = (type(e), str(e))
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error[0](error[1])
        return result

    def lost(self, reason: str) -> PeerLost:
        """The PeerLost for a lost_reason(), saying which process if that is known: the other one
        of two; of more, the survivor seldom knows which."""
        global _lost
        _stop()
        _lost = True
        if reason == SIGTERM:
            return PeerLost(f"process {self.rank} of {self.world} was stopped by SIGTERM (torchrun sends it "
                            f"when another process of the run has ended)", reason)
        who = f"process {1 - self.rank} of 2" if self.world == 2 else f"another process of {self.world}"
        if reason == "timeout":
            return PeerLost(f"{who} did not answer within dist.timeout={self.timeout:g}s (it hangs or has "
                            f"stopped)", reason)
        return PeerLost(f"{who} stopped ({reason})", reason)

    @contextlib.contextmanager
    def _collective(self) -> Iterator[None]:
        """A torch.distributed failure inside becomes PeerLost; every other error passes unchanged."""
        try:
            yield
        except PeerLost:
            raise
        except Exception as e:
            reason = lost_reason(e)
            if reason is None:
                raise
            raise self.lost(reason) from e

    @contextlib.contextmanager
    def guard(self, on_lost: Callable[[str], None] | None = None) -> Iterator[None]:
        """Around a whole run (DistributedDataParallel's all-reduce fails inside loss.backward()):
        a lost process, a timeout or torchrun's SIGTERM leaves every surviving rank as one PeerLost,
        after `on_lost(message)` has run (rank 0: mark the run failed). Any error leaving the run
        turns later SIGTERMs off, so nothing breaks into that path. One process: nothing to guard."""
        try:
            yield
        except BaseException as e:
            if not self.enabled:
                raise
            _stop()
            reason = lost_reason(e)
            if reason is None:
                raise
            lost = e if isinstance(e, PeerLost) and e.reason != SIGTERM else self.lost(reason)
            if on_lost is not None:
                on_lost(str(lost))
            if lost is e:
                raise
            raise lost from e

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler under torchrun: PeerLost in the main thread, unless already stopping."""
        if not _stopping:
            raise self.lost(SIGTERM)

    def launcher(self) -> str:
        """The command that starts this run again: `prunegreedy`, or torchrun with this many processes."""
        if not self.enabled:
            return "prunegreedy"
        nodes = f"--nnodes={self.world // self.local_world} ... " if self.world != self.local_world else ""
        return f"torchrun {nodes}--nproc_per_node={self.local_world} -m prunegreedy"

    def close(self) -> None:
        if self.enabled and dist.is_initialized() and not _lost:  # a peer is gone: nothing to tear down
            dist.destroy_process_group()


SINGLE = Dist()  # one process: every distributed step is a no-op


def from_env(device: torch.device, timeout: float = 600.0) -> tuple[Dist, torch.device]:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK);
    a collective waits `timeout` seconds for the other processes. Under torchrun, SIGTERM then
    raises PeerLost in the main thread (see the module notes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise RunError(f"torchrun needs CUDA (nccl) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    d = Dist(rank, world, local, local_world, timeout)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, d.on_sigterm)
    return d, device
