"""airbench94's network (Jordan 2024) with widths as arguments: a patch-whitening stem, then groups of
conv3x3 -> maxpool2 -> BN -> act -> conv3x3 -> BN -> act, then a global max pool, a linear layer
without bias and logits scaled by 1/9.

Registered in nn.models as `fastcifar-W1-W2-...` (any widths, e.g. fastcifar-64-256-256) and split
at its groups (group1, group2, ...): stage 1 holds the stem. The whitening stem needs training
images before training: the run calls its `init_from_data` (train.datainit).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .layers import Scale, Whiten, dirac_, make_activation

NAME = "fastcifar"
BN_MOMENTUM = 0.4  # PyTorch's convention; airbench's 0.6 is 1 - this
BN_EPS = 1e-12


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return dirac_(nn.Conv2d(cin, cout, 3, padding=1, bias=False))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, act: str = "gelu"):
        super().__init__()
        self.conv1 = _conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _bn(cout)
        self.act1 = make_activation(act)
        self.conv2 = _conv(cout, cout)
        self.norm2 = _bn(cout)
        self.act2 = make_activation(act)

    @torch.no_grad()
    def init_at_width(self) -> None:
        """A fresh init at the current widths (train.datainit.init_stage): a cut of the previous group
        leaves the dirac filters of its removed channels all zero, and a zero filter's gradient
        through BatchNorm (eps 1e-12) is about 1e6 times too large."""
        for conv in (self.conv1, self.conv2):
            conv.reset_parameters()
            dirac_(conv)
        for norm in (self.norm1, self.norm2):
            norm.reset_running_stats()
            norm.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class FastCifar(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 256, 256), act: str = "gelu",
                 scale: float = 1 / 9):
        super().__init__()
        self.whiten = Whiten(3, 2)
        self.act = make_activation(act)
        c = self.whiten.out_channels
        for i, w in enumerate(widths):
            setattr(self, f"group{i + 1}", ConvGroup(c, w, act))
            c = w
        self.n_groups = len(widths)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c, num_classes, bias=False)
        self.scale = Scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        for i in range(self.n_groups):
            x = getattr(self, f"group{i + 1}")(x)
        return self.scale(self.fc(torch.flatten(self.pool(x), 1)))


def parse_widths(name: str) -> tuple[int, ...]:
    """fastcifar-64-256-256 -> (64, 256, 256)."""
    parts = name.split("-")[1:]
    if parts and all(p.isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)
    raise ConfigError(f"model '{name}': a fast CIFAR network is named {NAME}-W1-W2-..., one positive width per "
                      f"group (e.g. {NAME}-64-256-256)")


def fast_cifar(name: str):
    """(factory(num_classes, image_size), split) of the fast network `name`."""
    widths = parse_widths(name)

    def build(num_classes: int, image_size: int) -> nn.Module:
        if (image_size - 1) >> len(widths) < 1:
            raise ConfigError(f"model '{name}': {len(widths)} groups halve a {image_size}-pixel image to nothing; "
                              f"use at most {max(1, (image_size - 1).bit_length() - 1)} groups")
        return FastCifar(num_classes, widths)
    return build, [f"group{i + 1}" for i in range(len(widths))]
