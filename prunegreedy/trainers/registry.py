"""Trainers by name (`train.trainer`): greedy, decoupled, and the end-to-end baselines."""
from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .common import check
from .decoupled import DecoupledRun
from .endtoend import EndToEndRun
from .greedy import GreedyRun

TRAINERS: dict[str, type[GreedyRun]] = {"greedy": GreedyRun, "decoupled": DecoupledRun, "end-to-end": EndToEndRun}


def get_trainer(cfg: Config) -> type[GreedyRun]:
    """The run class of cfg.train.trainer, after every other name in the config is checked."""
    plan = check(cfg)
    if cfg.train.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer '{cfg.train.trainer}'; valid: {', '.join(TRAINERS)}")
    trainer = TRAINERS[cfg.train.trainer]
    trainer.validate(cfg, plan)
    return trainer
