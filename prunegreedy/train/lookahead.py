"""Lookahead (Zhang et al. 2019) as airbench uses it: every few steps the weights are pulled to a moving
average of themselves, and at the end of the schedule the average is copied back into the model.

Every floating-point entry of the modules' state dicts takes part (weights, BatchNorm running
statistics); integer counters do not. The decay of a pull ramps up with the schedule's progress
cubed, so early training is left alone and the last steps are averaged most.
"""
from __future__ import annotations

import torch
from torch import nn


def decay_at(step: int, total: int, decay: float) -> float:
    """The decay of a pull after `step` of `total` steps: decay * (step / total)^3."""
    return decay * (step / max(1, total)) ** 3


class Lookahead:
    """The moving average of `modules`' floating-point state, started from their current values."""

    def __init__(self, modules: list[nn.Module]):
        self.live = [t for m in modules for t in m.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def load(self, slow: list[torch.Tensor]) -> None:
        """Take a saved average (a resumed loop), in the order of `self.slow`."""
        for mine, saved in zip(self.slow, slow, strict=True):
            mine.copy_(saved)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """slow <- decay * slow + (1 - decay) * live; then live <- slow."""
        for slow, live in zip(self.slow, self.live):
            slow.lerp_(live.detach(), 1.0 - decay)
            live.copy_(slow)

    def finish(self) -> None:
        """The end of the schedule: the model takes the average (airbench's update with decay 1)."""
        self.update(1.0)
