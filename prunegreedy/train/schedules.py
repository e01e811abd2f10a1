"""Learning-rate schedules: pure functions of training progress t in [0, 1) within a stage.

A stage can be any (fractional) number of epochs and milestones scale with it.
"""
from __future__ import annotations

import math
from typing import Callable

from ..config import TrainConfig
from ..errors import ConfigError


def _step(t: float, cfg: TrainConfig) -> float:
    """Multiply by gamma at each milestone (fractions of the stage); the paper: / 5 at 15, 30, 45 of 50."""
    return cfg.gamma ** sum(t >= m for m in cfg.milestones)


def _linear(t: float, cfg: TrainConfig) -> float:
    """Linear decay to zero at the end of the stage."""
    return max(0.0, 1.0 - t)


def _cosine(t: float, cfg: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _constant(t: float, cfg: TrainConfig) -> float:
    return 1.0


def _triangle(t: float, cfg: TrainConfig) -> float:
    """Linear from cfg.triangle_start to 1 at fraction cfg.triangle_peak, then linear to cfg.triangle_end at
    the end (airbench: 0.2, 0.23, 0.07)."""
    peak = cfg.triangle_peak
    if t < peak:
        return cfg.triangle_start + (1.0 - cfg.triangle_start) * t / peak
    return 1.0 + (cfg.triangle_end - 1.0) * (t - peak) / (1.0 - peak)


SCHEDULES: dict[str, Callable[[float, TrainConfig], float]] = {
    "step": _step, "linear": _linear, "cosine": _cosine, "constant": _constant, "triangle": _triangle,
}


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, cfg: TrainConfig,
          restart: int | None = None) -> float:
    """Learning rate for optimizer step `step` of `total_steps`, with linear warm-up over cfg.warmup.
    From step `restart` on, the schedule starts over across the steps that remain.

    The warm-up ramp (step + 1) / (warmup * total_steps) is capped at 1: uncapped, its last step
    overshoots whenever warmup * total_steps is not whole (a one-step stage with warmup 0.1 would
    step at 10x the lr, too far for BatchNorm's running statistics to follow)."""
    if restart is not None and step >= restart:
        step, total_steps = step - restart, total_steps - restart
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")
    t = step / max(1, total_steps)
    factor = SCHEDULES[schedule](t, cfg)
    if cfg.warmup > 0 and t < cfg.warmup:
        factor *= min(1.0, (step + 1) / (cfg.warmup * total_steps))
    return base_lr * factor
