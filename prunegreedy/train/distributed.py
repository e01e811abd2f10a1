"""Data-parallel training under torchrun: `torchrun --nproc_per_node=N -m prunegreedy run ...`.

Each process trains the same stage on its share of every global batch; only the trainable
block + head are wrapped in DistributedDataParallel (the frozen prefix needs no gradients).
Rank 0 alone writes the run folder. Decisions that must match on every rank (which filters to
cut) are taken on rank 0 and broadcast, and the result is checked by a checksum on all ranks.
A single process is the same code with world = 1, where every method here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import PrunegreedyError, RunError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

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
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True only if `flag` holds on every rank (so every rank stops together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
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
        for m in modules:
            for b in m.buffers():
                dist.broadcast(b, src=0)

    def check_same(self, modules: list[nn.Module], what: str) -> float:
        """Checksum of the modules' weights and buffers; an error unless every rank has the same."""
        total = sum(float(t.detach().double().sum()) + t.numel() for m in modules
                    for t in list(m.parameters()) + list(m.buffers()))
        if self.enabled:
            sums: list[float] = [0.0] * self.world
            dist.all_gather_object(sums, total)
            if any(s != sums[0] for s in sums):
                raise RunError(f"{what} differ across ranks (checksums {sums})")
        return total

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
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

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Dist()  # one process: every distributed step is a no-op


def from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, local_world), device
