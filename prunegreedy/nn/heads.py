"""Classifier heads: the 'k hidden layers' problem each greedy stage solves, and VGG's classifier.

Like the blocks, every head class declares `FIELDS` (its spec's fields and types) and
`for_stage(in_channels, stage, num_classes, in_size)`; `nn.network.make_head` picks it from HEADS by
name. `aux` is the paper's head; `pooled` and `mlp-sr` shrink the map first, so a head costs a
few percent of its block instead of as much as the block (issue 13; DGL's aux-net study).
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
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int,
                  in_size: tuple[int, int] | None = None) -> AuxHead:
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
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int,
                  in_size: tuple[int, int] | None = None) -> VGGHead:
        return cls(in_channels, stage.head_width, num_classes)


def pool_to(size: int, in_size: tuple[int, int]) -> nn.Module:
    """Average pool an in_size map to size x size. A fixed window where the map divides evenly: the
    same numbers as the adaptive pool, and it exports to ONNX with a dynamic batch size."""
    h, w = in_size
    if h % size == 0 and w % size == 0:
        return nn.AvgPool2d((h // size, w // size))
    return nn.AdaptiveAvgPool2d(size)


def default_head_pool(in_size: tuple[int, int]) -> int:
    """A quarter of the map's side, at least 2 (DGL's MLP-SR reduces the map by 4 per side)."""
    return max(2, min(in_size) // 4)


class _ShrinkingHead(nn.Module):
    """What pooled and mlp-sr share: pool the block output to in_pool x in_pool first.

    `bn` False is the BN-folded form (convs and linears then carry biases), the one an export
    holds; `in_size` (the block's map) is recorded so the folded form keeps fixed pool windows.
    """

    FIELDS: ClassVar[dict[str, type]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.shrink(x))

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """The head after `shrink`. The pool works channel by channel, so heads that read other
        channels of one block output can share it (compress.sensitivity)."""
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        first = next(m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))
        return first.in_features // 4 if isinstance(first, nn.Linear) else (
            first.in_channels if isinstance(first, nn.Conv2d) else first.num_features)

    def spec(self) -> dict:
        return {"type": self.TYPE, **{k: self._args[k] for k in self.FIELDS if k != "in_channels"},
                "in_channels": self.in_channels}

    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module:
        return cls(**{k: spec[k] for k in cls.FIELDS})

    @staticmethod
    def _hidden(c_in: int, c_out: int, kernel: int, bn: bool) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not bn)
        return [conv, nn.BatchNorm2d(c_out) if bn else nn.Identity(), nn.ReLU(inplace=True)]


class PooledHead(_ShrinkingHead):
    """Average pool to in_pool x in_pool, then the paper's head: k-1 conv3x3+BN+ReLU, pool 2x2, BN, linear.

    The paper's ImageNet heads average the block output first; at a quarter of the side the hidden
    conv costs 1/16 of the aux head's.
    """

    TYPE = "pooled"
    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "k": int, "num_classes": int,
                                         "in_pool": int, "in_size": list, "bn": bool}

    def __init__(self, in_channels: int, hidden: int, k: int, num_classes: int, in_pool: int,
                 in_size: list[int], bn: bool = True):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._args = {"hidden": hidden, "k": k, "num_classes": num_classes, "in_pool": in_pool,
                      "in_size": list(in_size), "bn": bn}
        self.shrink = pool_to(in_pool, tuple(in_size))
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(k - 1):
            layers += self._hidden(c, hidden, 3, bn)
            c = hidden
        self.body = nn.Sequential(*layers)
        self.pool = pool_to(2, (in_pool, in_pool))
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.fc = nn.Linear(c * 4, num_classes)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.pool(self.body(z))), 1))

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int,
                  in_size: tuple[int, int] | None = None) -> PooledHead:
        return cls(in_channels, stage.head_width, stage.k, num_classes, _in_pool(stage, in_size), list(in_size))


class MLPSRHead(_ShrinkingHead):
    """DGL's MLP-SR: average pool to in_pool x in_pool, three conv1x1+BN+ReLU, pool 2x2, a small MLP.

    The MLP is Linear(4 * hidden -> hidden) + BN + ReLU, then Linear(hidden -> classes).
    """

    TYPE = "mlp-sr"
    LAYERS = 3
    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "num_classes": int, "in_pool": int,
                                         "in_size": list, "bn": bool}

    def __init__(self, in_channels: int, hidden: int, num_classes: int, in_pool: int, in_size: list[int],
                 bn: bool = True):
        super().__init__()
        self._args = {"hidden": hidden, "num_classes": num_classes, "in_pool": in_pool, "in_size": list(in_size),
                      "bn": bn}
        self.shrink = pool_to(in_pool, tuple(in_size))
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(self.LAYERS):
            layers += self._hidden(c, hidden, 1, bn)
            c = hidden
        self.body = nn.Sequential(*layers)
        self.pool = pool_to(2, (in_pool, in_pool))
        self.fc1 = nn.Linear(hidden * 4, hidden, bias=not bn)
        self.bn1 = nn.BatchNorm1d(hidden) if bn else nn.Identity()
        self.fc = nn.Linear(hidden, num_classes)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.pool(self.body(z)), 1)
        return self.fc(torch.relu(self.bn1(self.fc1(h))))

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int,
                  in_size: tuple[int, int] | None = None) -> MLPSRHead:
        return cls(in_channels, stage.head_width, num_classes, _in_pool(stage, in_size), list(in_size))


class MaxHead(_ShrinkingHead):
    """airbench's classifier as an aux head: k-1 conv3x3+BN+GELU, global max pool, linear without bias,
    logits x 1/9. The fast recipe's lr (per 1024, x64 on BN biases) is tuned for these logits; a head
    with a BN before a biased linear diverges at it."""

    TYPE = "max"
    SCALE = 1 / 9
    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "k": int, "num_classes": int,
                                         "bn": bool}

    def __init__(self, in_channels: int, hidden: int, k: int, num_classes: int, bn: bool = True):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._args = {"hidden": hidden, "k": k, "num_classes": num_classes, "bn": bn}
        self.shrink = nn.Identity()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(k - 1):
            conv = nn.Conv2d(c, hidden, 3, padding=1, bias=not bn)
            layers += [conv, nn.BatchNorm2d(hidden) if bn else nn.Identity(), nn.GELU()]
            c = hidden
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c, num_classes, bias=False)

    @property
    def in_channels(self) -> int:
        return self.body[0].in_channels if len(self.body) else self.fc.in_features

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(z)), 1)) * self.SCALE

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec, num_classes: int,
                  in_size: tuple[int, int] | None = None) -> MaxHead:
        return cls(in_channels, stage.head_width, stage.k, num_classes)


def _in_pool(stage: StageSpec, in_size: tuple[int, int] | None) -> int:
    if in_size is None:
        raise ValueError(f"the {stage.head} head needs the block's map size")
    return stage.head_pool if stage.head_pool is not None else default_head_pool(in_size)


# Head types by the name stored in specs and plans (`model.head`).
HEADS: dict[str, type[nn.Module]] = {"aux": AuxHead, "pooled": PooledHead, "mlp-sr": MLPSRHead, "max": MaxHead,
                                     "vgg": VGGHead}
