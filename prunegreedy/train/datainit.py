"""Initialisation from data: modules that set their weights from training images before training.

A module declares it by a method `init_from_data(images)` taking normalised images (N, C, H, W);
the run start calls every such submodule once, before stage 1 (a whitening stem). A module whose
init depends on its input width (dirac's identity filters) declares `init_at_width()`, called before a
greedy stage trains, at the width the previous stage's cut left it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import Dataset, Normalize

INIT_IMAGES = 5000  # airbench whitens with the patches of 5,000 training images


@torch.no_grad()
def init_from_data(model: nn.Module, ds: Dataset, norm: Normalize, seed: int, n: int = INIT_IMAGES) -> int:
    """Call `init_from_data` of every submodule that has one with n training images drawn with `seed`
    (a random subset: an image folder's split is sorted by class); return how many were called."""
    takers = _declaring(model, "init_from_data")
    if not takers:
        return 0
    pick = torch.randperm(ds.num_train, generator=torch.Generator().manual_seed(seed))[:n]
    images = torch.cat([norm(ds.train_x[i.to(ds.train_x.device)]) for i in pick.split(1000)])
    for m in takers:
        m.init_from_data(images)
    return len(takers)


def init_stage(module: nn.Module) -> int:
    """Call `init_at_width` of every submodule of a stage about to train that has one; return how many."""
    takers = _declaring(module, "init_at_width")
    for m in takers:
        m.init_at_width()
    return len(takers)


def _declaring(module: nn.Module, method: str) -> list[nn.Module]:
    """The submodules of `module` (itself included) that declare `method`."""
    return [m for m in module.modules() if callable(getattr(m, method, None))]
