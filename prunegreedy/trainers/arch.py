"""Which network a model run (model.arch) trains, checked before any folder or data.

A model run trains a whole network cut into stages at module names, instead of a plan of the
paper's blocks. Its name is a registered model (nn.models), or "user:<Class>" for a module the
caller passed from Python (api.fit(model=...)), which nothing can build again by name.
"""
from __future__ import annotations

import functools

from torch import nn

from ..compress.network import USER
from ..config import Config
from ..errors import ConfigError
from ..nn.models import build_model, default_split
from ..nn.spec import StageSpec
from ..nn.split import split_stages


MODEL_TRAINERS = ("greedy", "decoupled", "end-to-end")


def model_split(cfg: Config) -> list[str]:
    """Where the run's stages end: model.split, or the registered model's default."""
    if cfg.model.split is not None:
        return list(cfg.model.split)
    if cfg.model.arch.startswith(USER):
        raise ConfigError("a module passed as model= needs split=[module names ending its stages]")
    return default_split(cfg.model.arch)


@functools.lru_cache(maxsize=32)
def _stage_count(arch: str, split: tuple[str, ...], side: int) -> int:
    """Build the named model once and cut it: every name and every split point checked."""
    stages, _ = split_stages(build_model(arch, 10, side), list(split))
    return len(stages)


def check_model(cfg: Config, side: int) -> list[StageSpec]:
    """One entry per stage, giving only its aux head (`model.head`, default pooled); the widths
    come from the model by a forward pass. The options model runs do not take yet are refused."""
    if cfg.train.trainer not in MODEL_TRAINERS:
        raise ConfigError(f"model {cfg.model.arch} trains with the {', '.join(MODEL_TRAINERS)} trainers; "
                          f"--trainer {cfg.train.trainer} takes the paper's plans only so far")
    split = model_split(cfg)
    n = len(split) if cfg.model.arch.startswith(USER) else _stage_count(cfg.model.arch, tuple(split), side)
    return [StageSpec(width=0, head=cfg.model.head or "pooled", head_pool=cfg.model.head_pool)] * n


def user_arch(model: nn.Module | list[nn.Module]) -> tuple[nn.Module, str, list[str] | None]:
    """(module, model.arch, split) for a module or a list of stage modules passed from Python.
    A list becomes an nn.Sequential cut after every one of its modules."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if not model or not all(isinstance(m, nn.Module) for m in model):
            raise ConfigError("stages given as a list must be a non-empty list of nn.Module")
        return nn.Sequential(*model), f"{USER}Sequential", [str(i) for i in range(len(model))]
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model= takes a registered name, an nn.Module or a list of them, got {type(model).__name__}")
    return model, f"{USER}{type(model).__name__}", None
