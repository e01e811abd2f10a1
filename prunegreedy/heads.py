"""Auxiliary classifier heads: the 'k hidden layers' problem each greedy stage solves."""
from __future__ import annotations

import torch
from torch import nn


class AuxHead(nn.Module):
    """k-1 conv3x3+BN+ReLU layers, average pool to pool x pool, BN, flatten, linear.

    k=1 is a linear classifier on the pooled block output (the paper's 1-hidden-layer problem,
    the hidden layer being the block itself).
    """

    def __init__(self, in_channels: int, hidden: int, k: int, num_classes: int, pool: int = 2):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
            c = hidden
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c * pool * pool, num_classes)
        self.k, self.hidden, self.pool_size = k, hidden, pool

    @property
    def in_channels(self) -> int:
        first = self.body[0] if len(self.body) else self.bn
        return first.in_channels if isinstance(first, nn.Conv2d) else first.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.pool(self.body(x))), 1))

    def spec(self) -> dict:
        return {"type": "aux", "in_channels": self.in_channels, "hidden": self.hidden, "k": self.k,
                "num_classes": self.fc.out_features, "pool": self.pool_size}

    @classmethod
    def from_spec(cls, spec: dict) -> "AuxHead":
        return cls(spec["in_channels"], spec["hidden"], spec["k"], spec["num_classes"], spec["pool"])


HEADS = {"aux": AuxHead}
