"""Trainers by name (`train.trainer`): greedy, decoupled, and the end-to-end baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import Config
from ..errors import ConfigError
from ..nn.net import GreedyNet
from ..nn.spec import StageSpec
from . import decoupled as decoupled_mod
from . import endtoend as endtoend_mod
from .common import Session, check
from .decoupled_model import decoupled_model
from .endtoend_model import end_to_end_model
from .greedy import greedy
from .modules import greedy_model


def _greedy(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    """The paper's plans, or a whole network cut into stages (model.arch)."""
    return greedy_model(cfg, plan, s) if cfg.model.arch is not None else greedy(cfg, plan, s)


def _end_to_end(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    """The plan's blocks, or a whole network (model.arch), trained jointly into the last head."""
    return end_to_end_model(cfg, plan, s) if cfg.model.arch is not None else endtoend_mod.end_to_end(cfg, plan, s)


def _decoupled(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    """The plan's blocks, or a whole network's stages (model.arch), all at once, each with its head."""
    return decoupled_model(cfg, plan, s) if cfg.model.arch is not None else decoupled_mod.decoupled(cfg, plan, s)


def _no_checks(cfg: Config, plan: list[StageSpec]) -> None:
    pass


@dataclass(frozen=True)
class Trainer:
    """A trainer: the function that trains a plan and returns the network, the checks of its own
    made before any folder (check() made the common ones), and whether its heads form an ensemble."""
    train: Callable[[Config, list[StageSpec], Session], GreedyNet]
    validate: Callable[[Config, list[StageSpec]], None] = _no_checks
    ensemble: bool = True


TRAINERS: dict[str, Trainer] = {
    "greedy": Trainer(_greedy),
    "decoupled": Trainer(_decoupled, decoupled_mod.validate),
    "end-to-end": Trainer(_end_to_end, endtoend_mod.validate, ensemble=False),
}


def get_trainer(cfg: Config) -> Trainer:
    """The trainer of cfg.train.trainer, after every other name in the config is checked."""
    plan = check(cfg)
    if cfg.train.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer '{cfg.train.trainer}'; valid: {', '.join(TRAINERS)}")
    trainer = TRAINERS[cfg.train.trainer]
    trainer.validate(cfg, plan)
    return trainer
