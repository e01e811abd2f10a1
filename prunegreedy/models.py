"""Stage plans (the paper's architectures) and the greedy network built from them.

A plan is a list of `StageSpec`s: what block j should be *before* compression. The pipeline
builds block j with the input width read from the (possibly pruned) block j-1, never from the
plan. A trained network is described by its spec (JSON: the real widths), from which
`build_from_spec` rebuilds it without unpickling anything.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .blocks import BLOCKS
from .errors import ConfigError, SpecError
from .heads import HEADS

SPEC_VERSION = 1


@dataclass(frozen=True)
class StageSpec:
    width: int  # output filters of the block before pruning
    psi: bool = False  # space-to-depth before the conv (halves resolution, x4 channels)
    bn: bool = True
    k: int = 2  # hidden layers of the auxiliary problem
    head_width: int = 128  # width of the head's k-1 hidden convs (the vgg head: its hidden Linear width)
    block: str = "conv"  # a key of blocks.BLOCKS
    pool: bool = False  # 2x2 max-pool after the block (vgg blocks)
    head: str = "aux"  # a key of heads.HEADS


def _cifar_k1(m: float) -> list[StageSpec]:
    w = [256, 256, 512, 1024, 1024]
    psi = [False, False, True, True, False]
    return [StageSpec(_scale(c, m), p, bn=False, k=1, head_width=_scale(c, m)) for c, p in zip(w, psi)]


def _cifar_k(k: int) -> Callable[[float], list[StageSpec]]:
    # Table in method.md: 128@32, 128@32, psi 256@16, 256@16 with BN; aux width 128, 256 after psi.
    def plan(m: float) -> list[StageSpec]:
        w = [128, 128, 256, 256]
        psi = [False, False, True, False]
        head = [128, 128, 256, 256]
        return [StageSpec(_scale(c, m), p, True, k, _scale(h, m)) for c, p, h in zip(w, psi, head)]
    return plan


def _imagenet_k1(m: float) -> list[StageSpec]:
    # As the official imagenet_single_layer.py: psi on the input (3x224x224 -> 12x112x112), then psi
    # before blocks 3, 4, 5 and 7 (its downsample=[1, 2, 3, 5] after 0-based stage n), which is
    # exactly where the width doubles: maps 112, 112, 56, 28, 14, 14, 7, 7. No BN; its k=1 heads
    # pool to 2x2 at every stage (avg_size 56 at 112, halved with the map), as AuxHead does.
    w = [256, 256, 512, 1024, 2048, 2048, 4096, 4096]
    psi = [True, False, True, True, True, False, True, False]
    return [StageSpec(_scale(c, m), p, bn=False, k=1, head_width=_scale(c, m)) for c, p in zip(w, psi)]


def _imagenet_k(k: int) -> Callable[[float], list[StageSpec]]:
    # As the official imagenet.py: psi on the input, then psi before blocks 3, 5 and 7 (its
    # downsample=[1, 3, 5, 7]; the 7 would only reach a ninth block), where the width doubles: maps
    # 112, 112, 56, 56, 28, 28, 14, 14. Aux width is its --fixed_feat 512, doubled at each of those
    # downsamplings (method.md's "512 doubling"), so 4x the block width throughout. Heads pool to
    # 2x2 (method.md), not to the 16x16 its avg_size=7 default gives at 112x112.
    def plan(m: float) -> list[StageSpec]:
        w = [128, 128, 256, 256, 512, 512, 1024, 1024]
        psi = [True, False, True, False, True, False, True, False]
        return [StageSpec(_scale(c, m), p, True, k, _scale(4 * c, m)) for c, p in zip(w, psi)]
    return plan


def _vgg11(m: float) -> list[StageSpec]:
    # VGG-11 with BN (torchvision cfg "A": 64 M 128 M 256 256 M 512 512 M 512 512 M), one conv per
    # stage, each max-pool closing the block before it. Stages 1-7 train against k=3 aux heads whose
    # hidden width is the block width: the official vgg.py doubles it but first average-pools the
    # head's input by 2, which AuxHead does not, and at full resolution a doubled width would cost
    # up to 4x its MACs; the block width keeps each head between 1/3 and 4/3 of the official one.
    # Stage 8 ends with torchvision's classifier (hidden 4096, dropout), so the stack is vgg11_bn.
    w = [64, 128, 256, 256, 512, 512, 512, 512]
    pool = [True, True, False, True, False, True, False, True]
    head = ["aux"] * 7 + ["vgg"]
    hidden = w[:7] + [4096]
    return [StageSpec(_scale(c, m), False, True, 3, _scale(h, m), block="vgg", pool=p, head=hd)
            for c, p, hd, h in zip(w, pool, head, hidden)]


def _scale(c: int, m: float) -> int:
    return max(1, round(c * m))


# name -> factory(width_mult) -> list of stages
PLANS: dict[str, Callable[[float], list[StageSpec]]] = {
    "cifar10-k1": _cifar_k1,
    "cifar10-k2": _cifar_k(2),
    "cifar10-k3": _cifar_k(3),
    "imagenet-k1": _imagenet_k1,
    "imagenet-k2": _imagenet_k(2),
    "imagenet-k3": _imagenet_k(3),
    "vgg11": _vgg11,
}


def make_plan(name: str, width_mult: float = 1.0, widths: list[int] | None = None) -> list[StageSpec]:
    """The stage plan `name`, scaled; explicit `widths` replace block widths (heads scale along)."""
    if name not in PLANS:
        raise ConfigError(f"unknown model plan '{name}'; valid: {', '.join(PLANS)}")
    plan = PLANS[name](width_mult)
    if widths is not None:
        if len(widths) != len(plan):
            raise ConfigError(f"model.widths has {len(widths)} entries but plan '{name}' has {len(plan)} stages")
        if any(w < 1 for w in widths):
            raise ConfigError(f"model.widths must be positive, got {widths}")
        base = PLANS[name](1.0)
        # Heads keep the plan's head/block width ratio; width_mult does not apply on top of explicit widths.
        plan = [replace(b, width=w, head_width=_scale(b.head_width, w / b.width)) for w, b in zip(widths, base)]
    return plan


def _registered(table: dict[str, type[nn.Module]], name: str, what: str) -> type[nn.Module]:
    if name not in table:
        raise ConfigError(f"unknown {what} type '{name}'; valid: {', '.join(table)}")
    return table[name]


def make_block(in_channels: int, stage: StageSpec) -> nn.Module:
    return _registered(BLOCKS, stage.block, "block").for_stage(in_channels, stage)


def make_head(in_channels: int, stage: StageSpec, num_classes: int) -> nn.Module:
    return _registered(HEADS, stage.head, "head").for_stage(in_channels, stage, num_classes)


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


def check_fields(d: dict, fields: dict[str, type], where: str) -> None:
    for name, tp in fields.items():
        v = d.get(name)
        if type(v) is not tp or (tp is int and v < 1):
            raise SpecError(f"{where}: field '{name}' must be a {'positive integer' if tp is int else tp.__name__}, "
                            f"got {v!r}")


def build_from_spec(spec: dict) -> GreedyNet:
    validate_spec(spec)
    blocks = [BLOCKS[b["type"]].from_spec(b) for b in spec["blocks"]]
    heads = [HEADS[h["type"]].from_spec(h) for h in spec["heads"]]
    return GreedyNet(blocks, heads)
