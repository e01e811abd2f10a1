"""Activation memory of training: the tensors autograd keeps from the forward for the backward.

This is the quantity greedy training saves on (method.md: a stage keeps activations for one block
plus its head, not for the whole network). Counting what autograd saves, instead of reading an
allocator, makes the number exact, device-independent and free of allocator caching.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_activation_bytes(fn: Callable[[], object], params: Iterable[torch.Tensor] = ()) -> tuple[int, int]:
    """(bytes, count) of the storages that the autograd graph built by `fn()` keeps for backward.

    Each storage counts once and whole: a tensor saved by two ops (a ReLU output saved by the ReLU
    and by the next conv), views of one storage and in-place results share memory, and a view
    keeps its whole storage alive. Storages of `params` (pass parameters and buffers, e.g. a
    module's `state_dict().values()`) are left out: conv and linear weights and BatchNorm running
    statistics are saved too, but they exist whether or not a graph is built (autocast's
    low-precision weight copies are new storages and do count). Storages are held until `fn`
    returns, so a freed one cannot hand its address to another and hide it.
    """
    excluded = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in excluded:
            storages[s.data_ptr()] = s
        return t.detach()  # keeping t itself would tie a saved output to its own grad_fn: a leak

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(s.nbytes() for s in storages.values()), len(storages)
