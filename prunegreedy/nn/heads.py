"""Classifier heads: the 'k hidden layers' problem each greedy stage solves, and VGG's classifier.

Like the blocks, every head class declares `FIELDS` (its spec's fields and types) and
`for_stage(in_channels, stage, num_classes)`; `nn.net.make_head` picks it from HEADS by name.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .spec import StageSpec


class AuxHead(nn.Module):
    """k-1 conv3x3+BN+ReLU layers, average pool to pool x pool, BN, flatten, linear.

    k=1 is a linear classifier on the pooled block output (the paper's 1-hidden-layer problem,
    the hidden layer being the block itself).
    """

    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "k": int, "num_classes": int, "pool": int}

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
    def from_spec(cls, spec: dict) -> AuxHead:
        return cls(spec["in_channels"], spec["hidden"], spec["k"], spec["num_classes"], spec["pool"])

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int) -> AuxHead:
        return cls(in_channels, stage.head_width, stage.k, num_classes)


class VGGHead(nn.Module):
    """torchvision's VGG classifier: average pool to 7x7, then Linear-ReLU-Dropout twice and a Linear.

    `hidden` (4096 in VGG) is a spec field so tests and narrow plans can build it small. With a
    224x224 input the feature map is already 7x7 and the pool does nothing, as in torchvision.
    """

    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "num_classes": int}

    def __init__(self, in_channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes))

    @property
    def in_channels(self) -> int:
        return self.classifier[0].in_features // 49

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))

    def spec(self) -> dict:
        return {"type": "vgg", "in_channels": self.in_channels, "hidden": self.classifier[0].out_features,
                "num_classes": self.classifier[-1].out_features}

    @classmethod
    def from_spec(cls, spec: dict) -> VGGHead:
        return cls(spec["in_channels"], spec["hidden"], spec["num_classes"])

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int) -> VGGHead:
        return cls(in_channels, stage.head_width, num_classes)


# Head types by the name stored in specs and plans.
HEADS: dict[str, type[nn.Module]] = {"aux": AuxHead, "vgg": VGGHead}
