"""What to cut: importance criteria by name, each a factory of a torch-pruning Importance."""
from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp

from ..errors import ConfigError

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}
NEEDS_GRADIENTS = {"taylor"}


def lowest(group, importance: str, n_remove: int, channel_groups: int = 1) -> list[int]:
    """Indices of the n_remove least important filters of the group, sorted. Where its layers split
    the channels into `channel_groups` groups (a grouped conv), the same positions go in every group:
    each position scored by its mean over the groups (as tp's pruners do); n_remove divides evenly."""
    with torch.no_grad():
        scores = IMPORTANCES[importance]()(group)
    if scores is None:
        raise ConfigError(f"importance '{importance}' does not apply to this block (no BatchNorm?); "
                          f"choose one of: {', '.join(k for k in IMPORTANCES if k != importance)}")
    # Stable sort so ties (e.g. dead filters with zero weight) are cut in index order: deterministic.
    if channel_groups > 1:
        size = len(scores) // channel_groups
        order = torch.sort(scores.float().cpu().view(channel_groups, size).mean(0), stable=True).indices
        return sorted(i + g * size for g in range(channel_groups) for i in order[:n_remove // channel_groups].tolist())
    order = torch.sort(scores.float().cpu(), stable=True).indices
    return sorted(order[:n_remove].tolist())


def check_importance(importance: str, gradients: Callable[[], None] | None) -> None:
    if importance not in IMPORTANCES:
        raise ConfigError(f"unknown importance '{importance}'; valid: {', '.join(IMPORTANCES)}")
    if importance in NEEDS_GRADIENTS and gradients is None:
        raise ConfigError(f"importance '{importance}' needs training batches for gradients")
