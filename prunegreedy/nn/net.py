"""The greedy network (blocks 1..J and every stage's head), built from a plan stage or a spec.

A trained network is described by its spec (JSON: the real, possibly pruned widths), from which
`build_from_spec` rebuilds it without unpickling anything.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, SpecError
from .blocks import BLOCKS
from .heads import HEADS
from .spec import SPEC_VERSION, StageSpec, check_fields


def _registered(table: dict[str, type[nn.Module]], name: str, what: str) -> type[nn.Module]:
    if name not in table:
        raise ConfigError(f"unknown {what} type '{name}'; valid: {', '.join(table)}")
    return table[name]


def make_block(in_channels: int, stage: StageSpec) -> nn.Module:
    return _registered(BLOCKS, stage.block, "block").for_stage(in_channels, stage)


def make_head(in_channels: int, stage: StageSpec, num_classes: int,
              in_size: tuple[int, int] | None = None) -> nn.Module:
    """The stage's head on a block giving in_channels maps of in_size (pooled heads need the size)."""
    return _registered(HEADS, stage.head, "head").for_stage(in_channels, stage, num_classes, in_size)


class GreedyNet(nn.Module):
    """Blocks 1..J and the auxiliary head of every stage. The last head is the classifier."""

    def __init__(self, blocks: list[nn.Module] | None = None, heads: list[nn.Module] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks or [])
        self.heads = nn.ModuleList(heads or [])

    def features(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[-1](self.features(x))

    def spec(self, **meta) -> dict:
        return {"version": SPEC_VERSION, "blocks": [b.spec() for b in self.blocks],
                "heads": [h.spec() for h in self.heads], **meta}


def validate_spec(spec: dict) -> None:
    """Refuse a spec that would not build, before any module or weight is touched."""
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise SpecError(f"architecture spec must be a JSON object with version {SPEC_VERSION}")
    blocks, heads = spec.get("blocks"), spec.get("heads")
    if not isinstance(blocks, list) or not isinstance(heads, list) or not blocks:
        raise SpecError("architecture spec needs a non-empty 'blocks' list and a 'heads' list")
    prev = None
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") not in BLOCKS:
            raise SpecError(f"block {i}: unknown block type {b.get('type') if isinstance(b, dict) else b!r}; "
                            f"valid: {', '.join(BLOCKS)}")
        check_fields(b, BLOCKS[b["type"]].FIELDS, f"block {i}")
        if prev is not None and b["in_channels"] != prev:
            raise SpecError(f"block {i}: in_channels {b['in_channels']} does not match block {i - 1}'s "
                            f"out_channels {prev}")
        prev = b["out_channels"]
    for i, h in enumerate(heads):
        if not isinstance(h, dict) or h.get("type") not in HEADS:
            raise SpecError(f"head {i}: unknown head type; valid: {', '.join(HEADS)}")
        check_fields(h, HEADS[h["type"]].FIELDS, f"head {i}")
    if heads and heads[-1]["in_channels"] != prev:
        raise SpecError(f"last head takes {heads[-1]['in_channels']} channels but the last block gives {prev}")


def build_from_spec(spec: dict) -> GreedyNet:
    validate_spec(spec)
    blocks = [BLOCKS[b["type"]].from_spec(b) for b in spec["blocks"]]
    heads = [HEADS[h["type"]].from_spec(h) for h in spec["heads"]]
    return GreedyNet(blocks, heads)
