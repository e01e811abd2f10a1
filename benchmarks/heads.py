"""Auxiliary head types side by side: what each costs next to its block, in MACs, memory and speed.

For the CPU recipe's plan (cifar10-k2 at width x0.5), per head type (aux, pooled, mlp-sr) and stage:
  macs_block / macs_head   fvcore MACs per image of block j and of its head
  saved_ratio              activation bytes autograd keeps for backward (prunegreedy.measure.memory)
                           of stage j (block + head on the frozen prefix) over end-to-end training's
  head_saved_extra         what the head adds to the block's own saved bytes (block under a k=1
                           linear read-out, the cheapest possible head, as the reference)
  images_per_s             training steps on random tensors, batch 128, fp32 (the compute side only)
Then, if run folders are given (`--runs NAME=RUN ...`), their final test accuracy and wall clock.
Prints a CSV and a summary line against issue 13's targets (heads' MACs <= 15 % of the blocks'
summed over stages; the head adds <= 15 % to its block's bytes; mean saved ratio <= 35 %).

    python benchmarks/heads.py [--width-mult 0.5] [--steps 10] [--runs pooled=runs/cpu-pooled ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from common import bare_step_fn, end_to_end_modules, stage_modules, time_it

from prunegreedy.config import TrainConfig
from prunegreedy.measure.memory import saved_activation_bytes
from prunegreedy.measure.size import count_macs, output_shape
from prunegreedy.nn.plans import make_plan
from prunegreedy.train import runtime

HEADS = ("aux", "pooled", "mlp-sr")
CFG = TrainConfig(amp="off")
BATCH = 128


def saved_per_sample(prefix, body, head, batch: int = 32) -> float:
    params = [t for m in (prefix, body, head) for t in m.state_dict().values()]
    return saved_activation_bytes(bare_step_fn(prefix, body, head, batch, CFG), params)[0] / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width-mult", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per stage")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUN", help="run folders to read accuracy from")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), args.threads)

    e2e_saved = saved_per_sample(*end_to_end_modules(make_plan("cifar10-k2", args.width_mult)))
    print("head,stage,macs_block,macs_head,head_over_block,saved_bytes_per_sample,saved_ratio,head_saved_extra,"
          "images_per_s")
    summary = {}
    for name in HEADS:
        plan = make_plan("cifar10-k2", args.width_mult, head=name)
        linear = [dataclasses.replace(s, head="aux", k=1) for s in plan]  # the block with the cheapest read-out
        widths, shape = [s.width for s in plan], (3, 32, 32)
        blocks_macs = heads_macs = 0
        ratios, extras = [], []
        for j in range(len(plan)):
            prefix, block, head = stage_modules(plan, widths, j)
            out = output_shape(block, shape)
            mb, mh = count_macs(block, shape), count_macs(head, out)
            saved = saved_per_sample(prefix, block, head)
            bare = saved_per_sample(*stage_modules(linear, widths, j))
            speed = BATCH / time_it(bare_step_fn(prefix, block, head, BATCH, CFG), args.steps)
            print(f"{name},{j + 1},{mb},{mh},{mh / mb:.3f},{saved:.0f},{saved / e2e_saved:.3f},"
                  f"{saved / bare - 1:.3f},{speed:.0f}")
            blocks_macs, heads_macs = blocks_macs + mb, heads_macs + mh
            ratios.append(saved / e2e_saved)
            extras.append(saved / bare - 1)
            shape = out
        summary[name] = (heads_macs / blocks_macs, max(extras), sum(ratios) / len(ratios))
    for spec in args.runs:
        label, path = spec.split("=", 1)
        meta = json.loads((Path(path) / "run.json").read_text())
        print(f"# run {label}: {path}: final test acc {meta.get('final_acc')} %, {meta.get('seconds', 0) / 60:.1f} min, "
              f"params {meta.get('params')}, MACs {meta.get('macs')}")
    parts = [f"{n}: heads {m:.1%} of blocks' MACs, head adds max {e:.1%} bytes, mean saved {r:.1%} of end-to-end"
             for n, (m, e, r) in summary.items()]
    print(f"summary (width x{args.width_mult:g}, batch {BATCH}, fp32, {torch.get_num_threads()} threads; targets "
          f"<= 15 %, <= 15 %, <= 35 %): " + "; ".join(parts))


if __name__ == "__main__":
    main()
