"""Network pieces: psi (invertible downsampling), the paper's conv block and the VGG block.

`nn.network.make_block` picks a block class from BLOCKS by the stage's `block` name. Every block has
a `conv` and a `bn` (export folds it), and declares `FIELDS`: its spec's fields and their types,
checked before a spec is built. A spec names the block's activation only when it is not ReLU, which
a spec without one means. Pruning finds a block's filters through the traced graph (compress.graph),
not by these names.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .layers import make_activation
from .spec import StageSpec


class Psi(nn.Module):
    """Space-to-depth by 2: (C, H, W) -> (4C, H/2, W/2). No parameters, no information lost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)


class Block(nn.Module):
    """What the blocks share: FIELDS are also the constructor's arguments, and the ones past the
    two widths are StageSpec attributes of the same name, so building needs no per-type code."""

    FIELDS: ClassVar[dict[str, type]] = {}

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @classmethod
    def for_stage(cls, in_channels: int, stage: StageSpec) -> Block:
        options = {name: getattr(stage, name) for name in cls.FIELDS if name not in ("in_channels", "out_channels")}
        return cls(in_channels, stage.width, **options)

    def _set_act(self, act: str) -> None:
        self.act_name = act
        self.act = make_activation(act)

    def _act_spec(self) -> dict:
        return {} if self.act_name == "relu" else {"act": self.act_name}


class ConvBlock(Block):
    """One greedy stage's block: optional psi, conv3x3, optional BN, activation (ReLU unless `act` says).

    `in_channels` counts channels before psi, so the spec reads the same as the stage plan.
    """

    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "out_channels": int, "psi": bool, "bn": bool,
                                         "act": str}

    def __init__(self, in_channels: int, out_channels: int, psi: bool = False, bn: bool = True, act: str = "relu"):
        super().__init__()
        self.psi = Psi() if psi else nn.Identity()
        conv_in = in_channels * 4 if psi else in_channels
        self.conv = nn.Conv2d(conv_in, out_channels, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self._set_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.psi(x))))

    def spec(self) -> dict:
        """Architecture as JSON-able data, read from the (possibly pruned) layers."""
        psi = isinstance(self.psi, Psi)
        return {
            "type": "conv",
            "in_channels": self.conv.in_channels // (4 if psi else 1),
            "out_channels": self.conv.out_channels,
            "psi": psi,
            "bn": isinstance(self.bn, nn.BatchNorm2d),
            **self._act_spec(),
        }


class VGGBlock(Block):
    """One VGG layer as a greedy stage: conv3x3 (with bias, as torchvision's VGG), BN, activation (ReLU unless
    `act` says), optional 2x2 max-pool.

    `bn` is a spec field so the BN-folded export can say the BN is gone (a folded block has bn False).
    """

    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "out_channels": int, "pool": bool, "bn": bool,
                                         "act": str}

    def __init__(self, in_channels: int, out_channels: int, pool: bool = False, bn: bool = True, act: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self._set_act(act)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))

    def spec(self) -> dict:
        return {"type": "vgg", "in_channels": self.conv.in_channels, "out_channels": self.conv.out_channels,
                "pool": isinstance(self.pool, nn.MaxPool2d), "bn": isinstance(self.bn, nn.BatchNorm2d),
                **self._act_spec()}


def cut_input(block: Block, removed: list[int]) -> None:
    """Remove from `block`'s conv the input channels fed by the previous block's filters `removed`.
    After psi each of them is 4 channels (c -> 4c..4c+3, pixel_unshuffle's order), which
    torch-pruning's tracer cannot follow, so the paper's blocks say it here."""
    per = 4 if isinstance(getattr(block, "psi", None), Psi) else 1
    tp.prune_conv_in_channels(block.conv, idxs=[c * per + i for c in removed for i in range(per)])


# Block types by the name stored in specs and plans; export and checkpoints rebuild through this.
BLOCKS: dict[str, type[Block]] = {"conv": ConvBlock, "vgg": VGGBlock}
