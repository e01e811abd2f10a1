"""The reader of run folders written before networks had one spec: their model.json listed the
paper blocks' widths and heads (version 1, no 'kind'). Such a spec is read as the spec of the
same network today: the plan made at the kept widths (nothing left to cut), each head as it was,
and the weights' names moved under the model. Read-only: nothing is rewritten on disk.
"""
from __future__ import annotations

import torch

from ..compress.network import KIND
from ..errors import SpecError
from ..nn.plans import PLANS

def is_legacy(spec: dict) -> bool:
    return isinstance(spec, dict) and "kind" not in spec and spec.get("version") == 1 and "blocks" in spec


def migrate(spec: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(today's spec, the weights under today's names) of a legacy run's model.json and weights."""
    plan, blocks, heads = spec.get("plan"), spec.get("blocks"), spec.get("heads")
    if plan not in PLANS or not isinstance(blocks, list) or not isinstance(heads, list) or len(heads) != len(blocks):
        raise SpecError(f"a model.json of version 1 needs a known 'plan' (one of {', '.join(PLANS)}) and one head "
                        f"per block")
    base = [s.width for s in PLANS[plan](1.0)]
    widths = [b["out_channels"] for b in blocks] + base[len(blocks):]  # stages not trained are never built
    settings = {}
    for j, h in enumerate(heads):
        settings[str(j)] = {"type": h["type"], "k": h.get("k", 2), "hidden": h["hidden"],
                            "in_pool": h.get("in_pool")}
    new = {"kind": KIND, "arch": plan, "class": "PlanNet",
           "args": {"num_classes": heads[-1]["num_classes"], "image_size": spec["input_shape"][1], "widths": widths},
           "split": [f"blocks.{j}" for j in range(len(PLANS[plan](1.0)))], "last_head": "aux",
           **{k: spec[k] for k in ("input_shape", "mean", "std", "classes")}, "shapes": {},
           "heads": settings, "pruning": [None] * len(blocks)}
    moved = {(f"model.{k}" if k.startswith("blocks.") else k): v for k, v in state.items()}
    return new, moved
