"""Network pieces: psi (invertible downsampling) and the conv3x3 -> [BN] -> ReLU block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Psi(nn.Module):
    """Space-to-depth by 2: (C, H, W) -> (4C, H/2, W/2). No parameters, no information lost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)


class ConvBlock(nn.Module):
    """One greedy stage's block: optional psi, conv3x3, optional BN, ReLU.

    `in_channels` counts channels before psi, so the spec reads the same as the stage plan.
    """

    def __init__(self, in_channels: int, out_channels: int, psi: bool = False, bn: bool = True):
        super().__init__()
        self.psi = Psi() if psi else nn.Identity()
        conv_in = in_channels * 4 if psi else in_channels
        self.conv = nn.Conv2d(conv_in, out_channels, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(self.psi(x))))

    def spec(self) -> dict:
        """Architecture as JSON-able data, read from the (possibly pruned) layers."""
        psi = isinstance(self.psi, Psi)
        return {
            "type": "conv",
            "in_channels": self.conv.in_channels // (4 if psi else 1),
            "out_channels": self.conv.out_channels,
            "psi": psi,
            "bn": isinstance(self.bn, nn.BatchNorm2d),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "ConvBlock":
        return cls(spec["in_channels"], spec["out_channels"], psi=spec["psi"], bn=spec["bn"])


# Block types by the name stored in specs; export and checkpoints rebuild through this.
BLOCKS = {"conv": ConvBlock}
