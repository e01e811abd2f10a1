"""Stage plans: the paper's CIFAR-10 and ImageNet architectures and VGG-11, by name.

A plan is a list of `StageSpec`s: what block j should be *before* compression. The trainers
build block j with the input width read from the (possibly pruned) block j-1, never from the plan.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..errors import ConfigError
from .heads import HEADS
from .spec import StageSpec

POOLING_HEADS = ("pooled", "mlp-sr")  # heads that pool the map to model.head_pool first


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


def make_plan(name: str, width_mult: float = 1.0, widths: list[int] | None = None, head: str | None = None,
              head_pool: int | None = None, input_size: int | None = None) -> list[StageSpec]:
    """The stage plan `name`, scaled; explicit `widths` replace block widths (heads scale along).

    `head` replaces the plan's auxiliary (`aux`) heads, never a special last head (VGG's
    classifier); `head_pool` is the side pooled heads shrink the map to, checked against the
    map of every stage when `input_size` (the input's side) is given.
    """
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
    if head is not None:
        if head not in HEADS:
            raise ConfigError(f"unknown model.head '{head}'; valid: {', '.join(HEADS)}")
        plan = [replace(s, head=head) if s.head == "aux" else s for s in plan]
    if head_pool is not None:
        if head_pool < 1:
            raise ConfigError(f"model.head_pool must be at least 1, got {head_pool}")
        plan = [replace(s, head_pool=head_pool) for s in plan]
        side = input_size
        for j, s in enumerate(plan):
            side = side // (2 ** (s.psi + s.pool)) if side is not None else None
            if side is not None and s.head in POOLING_HEADS and head_pool > side:
                raise ConfigError(f"model.head_pool {head_pool} is larger than stage {j + 1}'s {side}x{side} map; "
                                  f"valid: 1 to {side}")
    return plan
