"""What every trainer shares: the config check before any folder or data, the UI protocol, small helpers."""
from __future__ import annotations

import importlib.metadata
import platform
from typing import Protocol

from torch import nn

from ..compress.hooks import HOOKS, get_hook
from ..compress.importance import IMPORTANCES
from ..config import Config
from ..data.registry import DATASETS
from ..errors import ConfigError
from ..nn.plans import make_plan
from ..nn.spec import StageSpec
from ..train.loop import StepCallback
from ..train.schedules import SCHEDULES
from .decisions import check_config as check_decisions


class UI(Protocol):
    def log(self, msg: str) -> None: ...

    def progress(self, desc: str) -> StepCallback | None: ...


class NullUI:
    def log(self, msg: str) -> None:
        pass

    def progress(self, desc: str) -> None:
        return None


def check(cfg: Config) -> list[StageSpec]:
    """Every registry name and per-stage list, checked before a folder is made or data is read."""
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"unknown dataset '{cfg.data.name}'; valid: {', '.join(DATASETS)}")
    side = 32 if cfg.data.name.startswith("cifar10") else cfg.data.image_size  # CIFAR ignores image_size
    plan = make_plan(cfg.model.plan, cfg.model.width_mult, cfg.model.widths, cfg.model.head, cfg.model.head_pool, side)
    hook = get_hook(cfg.compress.hook)
    if cfg.compress.at < 1 and cfg.compress.hook != "none" and hook.cut is None:
        raise ConfigError(f"compress.at {cfg.compress.at:g} cuts inside the schedule, which hook "
                          f"'{cfg.compress.hook}' cannot do; use compress.at 1 or a hook that can: "
                          f"{', '.join(n for n, h in HOOKS.items() if h.cut is not None)}")
    if cfg.compress.importance not in IMPORTANCES:
        raise ConfigError(f"unknown importance '{cfg.compress.importance}'; valid: {', '.join(IMPORTANCES)}")
    for name in (cfg.train.schedule, cfg.compress.finetune_schedule):
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")
    n = len(plan)
    if isinstance(cfg.train.epochs, list) and len(cfg.train.epochs) != n:
        raise ConfigError(f"train.epochs lists {len(cfg.train.epochs)} values but the plan has {n} stages")
    if cfg.compress.ratios is not None and len(cfg.compress.ratios) != n:
        raise ConfigError(f"prune ratios list {len(cfg.compress.ratios)} values but the plan has {n} stages")
    check_decisions(cfg, plan, (3, side, side))  # budgets and sensitivity (issue 15)
    return plan


def stage_ratio(cfg: Config, stage: int, n: int) -> float:
    if cfg.compress.hook == "none":
        return 0.0
    return cfg.stage_value(cfg.compress.ratios, cfg.compress.ratio, stage, n)


def out_width(block: nn.Module) -> int:
    """Output filters of a block, or of the last block of a Sequential of blocks (end-to-end)."""
    return (block[-1] if isinstance(block, nn.Sequential) else block).conv.out_channels


def removed_count(removed: list[int] | dict[int, list[int]] | None) -> int:
    """Filters cut: a block's list, or every block's ({block: list}, prune-after-training)."""
    if removed is None:
        return 0
    return sum(map(len, removed.values())) if isinstance(removed, dict) else len(removed)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prunegreedy", "torch", "torchvision", "torch-pruning", "fvcore"):
        try:
            out[pkg] = importlib.metadata.version(pkg)  # torch-pruning's __version__ is wrong
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
