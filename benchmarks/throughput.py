"""Training throughput of each greedy stage and of an end-to-end epoch against their compute bounds.

For every stage of a plan (default: the paper's k=2 CIFAR-10 net, full width, batch 128), and for
end-to-end training of the same plan (all blocks jointly into the last head, as
prunegreedy.endtoend trains them), side by side in one process:
  bound   images/s of the same training step (frozen-prefix forward, trained modules forward,
          backward, SGD step) on random tensors: the compute bound, no data pipeline;
  train   images/s of prunegreedy.train.loop.train on real data (fetch, augment, normalise);
  data    seconds per batch of fetch + batched crop/flip + normalise alone;
  epoch   seconds per epoch of the training data at the measured `train` rate.
Prints a CSV (also written to --csv), then one summary line comparing one end-to-end epoch with
one epoch of every greedy stage in turn (what a greedy epoch-per-stage budget costs).

    python benchmarks/throughput.py --data-dir ~/data/cifar10 [--width-mult 1] [--steps 12] [--csv F]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from common import bare_step_fn, end_to_end_modules, stage_modules, time_it

from prunegreedy.data import base as data_base
from prunegreedy.data import registry as data_registry
from prunegreedy.nn import plans as models_plans
from prunegreedy import records
from prunegreedy.train import runtime
from prunegreedy.train import loop as train_loop
from prunegreedy.config import DataConfig
from prunegreedy.config import TrainConfig

E2E = "end-to-end"
COLUMNS = "stage,width,bound_img_s,train_img_s,train_vs_bound,data_ms_per_batch,step_ms,data_overhead_pct,epoch_s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="CIFAR-10 folder; default: the bundled sample")
    ap.add_argument("--plan", default="cifar10-k2")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--csv", type=Path, help="also write the CSV to this file")
    args = ap.parse_args()

    runtime.setup(torch.device("cpu"), args.threads)
    name = "cifar10" if args.data_dir else "cifar10-sample"
    ds = data_registry.load_dataset(DataConfig(name=name, data_dir=args.data_dir))
    cfg = TrainConfig(batch_size=args.batch, amp="off", schedule="constant")
    norm = data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    plan = models_plans.make_plan(args.plan, args.width_mult)
    widths = [s.width for s in plan]
    steps_per_epoch = math.ceil(len(ds.train_x) / args.batch)

    def fetch():
        gen = torch.Generator().manual_seed(0)
        for i, _ in enumerate(data_base.train_batches(ds.train_x, ds.train_y, args.batch, norm, gen)):
            if i + 1 >= args.steps:
                break
    data_s = time_it(fetch, 1, warmup=1) / args.steps

    def measure(prefix, block, head) -> tuple[float, float, float]:
        """(bound images/s, train images/s, train seconds per step) of one set of trained modules."""
        bound_s = time_it(bare_step_fn(prefix, block, head, args.batch, cfg), args.steps)
        gen = torch.Generator().manual_seed(0)
        chain = train_loop.Chain([(block, head)], prefix)
        train_loop.train(chain, ds, norm, cfg, 2 / steps_per_epoch, 0.01, "constant", torch.device("cpu"),
                         gen)  # warm-up
        stats = train_loop.train(chain, ds, norm, cfg, args.steps / steps_per_epoch, 0.01, "constant",
                                 torch.device("cpu"), gen).stats[0]
        return args.batch / bound_s, stats.images_per_s, stats.seconds / args.steps

    names = [str(j + 1) for j in range(len(plan))] + [E2E]
    lines, rows = [COLUMNS], {}
    print(COLUMNS, flush=True)
    for j, label in enumerate(names):
        mods = end_to_end_modules(plan) if label == E2E else stage_modules(plan, widths, j)
        bound, img_s, step_s = rows[label] = measure(*mods)
        lines.append(f"{label},{plan[min(j, len(plan) - 1)].width},{bound:.1f},{img_s:.1f},{img_s / bound:.3f},"
                     f"{1000 * data_s:.1f},{1000 * step_s:.1f},{100 * data_s / step_s:.2f},"
                     f"{len(ds.train_x) / img_s:.1f}")
        print(lines[-1], flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        records.write_text(args.csv, "\n".join(lines) + "\n")
    ratios = [rows[n][1] / rows[n][0] for n in names[:-1]]
    greedy_epoch = sum(len(ds.train_x) / rows[n][1] for n in names[:-1])
    e2e_bound, e2e_img_s, e2e_step_s = rows[E2E]
    e2e_epoch = len(ds.train_x) / e2e_img_s
    print(f"summary: training runs at {min(ratios):.2f}-{max(ratios):.2f}x of the compute bound per greedy stage, "
          f"end-to-end at {e2e_img_s / e2e_bound:.2f}x; data pipeline {100 * data_s / rows['1'][2]:.1f}% of the "
          f"stage-1 step, {100 * data_s / e2e_step_s:.1f}% of the end-to-end step; one end-to-end epoch "
          f"{e2e_epoch:.0f} s vs {greedy_epoch:.0f} s for one epoch of each greedy stage "
          f"({e2e_epoch / greedy_epoch:.2f}x; {len(ds.train_x)} images, {args.plan}, width x{args.width_mult:g}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
