"""Trainers by name (`train.trainer`): the greedy pipeline and the end-to-end baselines."""
from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .common import check
from .endtoend import EndToEndRun
from .greedy import GreedyRun

TRAINERS: dict[str, type[GreedyRun]] = {"greedy": GreedyRun, "end-to-end": EndToEndRun}


def get_trainer(cfg: Config) -> type[GreedyRun]:
    """The run class of cfg.train.trainer, after every other name in the config is checked."""
    check(cfg)
    if cfg.train.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer '{cfg.train.trainer}'; valid: {', '.join(TRAINERS)}")
    return TRAINERS[cfg.train.trainer]
