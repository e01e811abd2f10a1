"""Stage plans (the paper's architectures) and the greedy network built from them.

A plan is a list of `StageSpec`s: what block j should be *before* compression. The pipeline
builds block j with the input width read from the (possibly pruned) block j-1, never from the
plan. A trained network is described by its spec (JSON: the real widths), from which
`build_from_spec` rebuilds it without unpickling anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    head_width: int = 128  # width of the head's k-1 hidden convs


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


def _scale(c: int, m: float) -> int:
    return max(1, int(round(c * m)))


# name -> factory(width_mult) -> list of stages
PLANS: dict[str, Callable[[float], list[StageSpec]]] = {
    "cifar10-k1": _cifar_k1,
    "cifar10-k2": _cifar_k(2),
    "cifar10-k3": _cifar_k(3),
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
        plan = [StageSpec(w, b.psi, b.bn, b.k, _scale(b.head_width, w / b.width)) for w, b in zip(widths, base)]
    return plan


def make_block(in_channels: int, stage: StageSpec) -> nn.Module:
    return BLOCKS["conv"](in_channels, stage.width, psi=stage.psi, bn=stage.bn)


def make_head(in_channels: int, stage: StageSpec, num_classes: int) -> nn.Module:
    return HEADS["aux"](in_channels, stage.head_width, stage.k, num_classes)


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
        check_fields(b, {"in_channels": int, "out_channels": int, "psi": bool, "bn": bool}, f"block {i}")
        if prev is not None and b["in_channels"] != prev:
            raise SpecError(f"block {i}: in_channels {b['in_channels']} does not match block {i - 1}'s "
                            f"out_channels {prev}")
        prev = b["out_channels"]
    for i, h in enumerate(heads):
        if not isinstance(h, dict) or h.get("type") not in HEADS:
            raise SpecError(f"head {i}: unknown head type; valid: {', '.join(HEADS)}")
        check_fields(h, {"in_channels": int, "hidden": int, "k": int, "num_classes": int, "pool": int},
                      f"head {i}")
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
