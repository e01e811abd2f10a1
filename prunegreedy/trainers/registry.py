"""Trainers by name (`train.trainer`): greedy, decoupled, the end-to-end baseline, and compress
(a trained network compressed stage by stage)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..nn.network import Network
from . import compress, decoupled, endtoend
from .common import Session, check
from .greedy import greedy


def _no_checks(cfg: Config, net: Network) -> None:
    pass


@dataclass(frozen=True)
class Trainer:
    """A trainer: the function that trains the session's network and returns every stage's head,
    the checks of its own made before any folder (check() made the common ones), and whether its
    heads form an ensemble, and whether it starts from trained weights (model.weights) rather
    than from scratch."""
    train: Callable[[Config, Session], list[nn.Module]]
    validate: Callable[[Config, Network], None] = _no_checks
    ensemble: bool = True
    trained: bool = False


TRAINERS: dict[str, Trainer] = {
    "greedy": Trainer(greedy),
    "decoupled": Trainer(decoupled.decoupled, decoupled.validate),
    "end-to-end": Trainer(endtoend.end_to_end, endtoend.validate, ensemble=False),
    "compress": Trainer(compress.compress, compress.validate, ensemble=False, trained=True),
}


def get_trainer(cfg: Config, module: nn.Module | None = None) -> Trainer:
    """The trainer of cfg.train.trainer, after every other name in the config is checked
    (`module`: the caller's own network, if any)."""
    if cfg.train.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer '{cfg.train.trainer}'; valid: {', '.join(TRAINERS)}")
    net = check(cfg, module)
    trainer = TRAINERS[cfg.train.trainer]
    if cfg.model.weights is not None and not trainer.trained:
        takes = ", ".join(name for name, t in TRAINERS.items() if t.trained)
        raise ConfigError(f"--weights starts from a trained network; --trainer {cfg.train.trainer} trains from "
                          f"scratch (trainers that take weights: {takes})")
    trainer.validate(cfg, net)
    return trainer
