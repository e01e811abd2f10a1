"""StageSpec: one stage's head settings and, for a made stage, its block; read by blocks, heads,
plans and the network.

It sits below them all so that none of them imports another to learn what a stage is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError


@dataclass(frozen=True)
class StageSpec:
    width: int  # output filters of the block before pruning
    psi: bool = False  # space-to-depth before the conv (halves resolution, x4 channels)
    bn: bool = True
    k: int = 2  # hidden layers of the auxiliary problem
    head_width: int = 128  # width of the head's k-1 hidden convs (the vgg head: its hidden Linear width)
    block: str = "conv"  # a key of nn.blocks.BLOCKS
    pool: bool = False  # 2x2 max-pool after the block (vgg blocks)
    head: str = "aux"  # a key of nn.heads.HEADS
    head_pool: int | None = None  # pooled / mlp-sr heads: side of the map they pool to first; None = a quarter
    act: str = "relu"  # the block's activation, a key of nn.layers.ACTIVATIONS
    # A spec describes the architecture, so an init (model.dirac) is no field of it: the weights loaded
    # over a rebuilt block are the same whatever it started from.


def check_fields(d: dict, fields: dict[str, type], where: str) -> None:
    for name, tp in fields.items():
        v = d.get(name)
        if type(v) is not tp or (tp is int and v < 1):
            raise SpecError(f"{where}: field '{name}' must be a {'positive integer' if tp is int else tp.__name__}, "
                            f"got {v!r}")
