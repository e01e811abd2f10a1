"""Training throughput of each greedy stage against its compute bound, and the data overhead.

For every stage of a plan (default: the paper's k=2 CIFAR-10 net), side by side in one process:
  bound   images/s of prefix forward + block/head forward/backward/SGD on random tensors;
  train   images/s of prunegreedy.train.train_stage on real data (fetch, augment, normalise);
  data    seconds per batch of fetch + batched crop/flip + normalise alone.
Prints a CSV, then one summary line.

    python benchmarks/throughput.py --data-dir ~/data/cifar10 [--width-mult 1] [--steps 12]
"""
from __future__ import annotations

import argparse
import math

import torch

from common import bare_step_fn, stage_modules, time_it
from prunegreedy import data, models, runtime, train
from prunegreedy.config import DataConfig, TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="CIFAR-10 folder; default: the bundled sample")
    ap.add_argument("--plan", default="cifar10-k2")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    runtime.setup(torch.device("cpu"), args.threads)
    name = "cifar10" if args.data_dir else "cifar10-sample"
    ds = data.load_dataset(DataConfig(name=name, data_dir=args.data_dir))
    cfg = TrainConfig(batch_size=args.batch, amp="off", schedule="constant")
    norm = data.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    plan = models.make_plan(args.plan, args.width_mult)
    widths = [s.width for s in plan]
    steps_per_epoch = math.ceil(len(ds.train_x) / args.batch)

    def fetch():
        gen = torch.Generator().manual_seed(0)
        for i, _ in enumerate(data.train_batches(ds.train_x, ds.train_y, args.batch, norm, gen)):
            if i + 1 >= args.steps:
                break
    data_s = time_it(fetch, 1, warmup=1) / args.steps

    print("stage,width,bound_img_s,train_img_s,train_vs_bound,data_ms_per_batch,step_ms,data_overhead_pct")
    ratios, overheads = [], []
    for j in range(len(plan)):
        prefix, block, head = stage_modules(plan, widths, j)
        bound_s = time_it(bare_step_fn(prefix, block, head, args.batch, cfg), args.steps)
        gen = torch.Generator().manual_seed(0)
        train.train_stage(prefix, block, head, ds, norm, cfg, 2 / steps_per_epoch, 0.01, "constant",
                          torch.device("cpu"), gen)  # warm-up
        stats = train.train_stage(prefix, block, head, ds, norm, cfg, args.steps / steps_per_epoch, 0.01,
                                  "constant", torch.device("cpu"), gen)
        bound = args.batch / bound_s
        ratio = stats.images_per_s / bound
        overhead = 100 * data_s / (stats.seconds / args.steps)
        ratios.append(ratio)
        overheads.append(overhead)
        print(f"{j + 1},{plan[j].width},{bound:.1f},{stats.images_per_s:.1f},{ratio:.3f},{1000 * data_s:.1f},"
              f"{1000 * stats.seconds / args.steps:.1f},{overhead:.2f}")
    print(f"summary: training runs at {min(ratios):.2f}-{max(ratios):.2f}x of the compute bound per stage; "
          f"data pipeline {overheads[0]:.1f}% of the stage-1 step ({args.plan}, width x{args.width_mult:g}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
