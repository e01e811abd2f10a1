"""What compression costs and saves, per stage, measured side by side in one process.

  prune_s    wall time of the pruning step itself (dependency graph + importance + removal);
  epoch_s    seconds per training epoch of stage j, unpruned (every earlier block at full
             width) and pruned (earlier blocks pruned by the ratio; block j starts at full
             width), plus the fine-tune epoch of the pruned block;
  total      the recipe's epochs per stage (and fine-tune epochs) times those epoch costs.
Prints a CSV and a summary line with the pruned / unpruned training-time ratio.

    python benchmarks/prune_cost.py [--config cifar10-cpu] [--ratio 0.5] [--steps 6]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from common import bare_step_fn, stage_modules, time_it
from prunegreedy.compress import graph as compress_graph
from prunegreedy import config
from prunegreedy.measure import size as metrics
from prunegreedy.nn import plans as models_plans
from prunegreedy.train import runtime
from prunegreedy.config import TrainConfig

TRAIN_IMAGES = 50_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cifar10-cpu")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    runtime.setup(torch.device("cpu"), args.threads)
    cfg = config.load(args.config)
    plan = models_plans.make_plan(cfg.model.plan, cfg.model.width_mult, cfg.model.widths)
    full = [s.width for s in plan]
    pruned = [compress_graph.kept_filters(w, args.ratio, cfg.compress.round_to) for w in full]
    tcfg = TrainConfig(batch_size=cfg.train.batch_size, amp="off")
    steps_per_epoch = math.ceil(TRAIN_IMAGES / tcfg.batch_size)
    ft_epochs = cfg.compress.finetune()

    print("stage,width,kept,prune_s,params_before,params_after,epoch_s_unpruned,epoch_s_pruned,finetune_epoch_s")
    total_u = total_p = 0.0
    prune_times = []
    for j in range(len(plan)):
        epochs = cfg.stage_value(cfg.train.epochs, 1.0, j, len(plan))
        step_u = time_it(bare_step_fn(*stage_modules(plan, full, j), tcfg.batch_size, tcfg), args.steps)
        prefix, block, head = stage_modules(plan, pruned, j)
        step_p = time_it(bare_step_fn(prefix, block, head, tcfg.batch_size, tcfg), args.steps)
        in_shape = metrics.output_shape(prefix, (3, 32, 32)) if j else (3, 32, 32)
        before = metrics.count_params(block)
        start = time.perf_counter()
        compress_graph.prune_stage(block, head, None, in_shape, args.ratio, cfg.compress.importance,
                                   cfg.compress.round_to)
        prune_s = time.perf_counter() - start
        prune_times.append(prune_s)
        step_f = time_it(bare_step_fn(prefix, block, head, tcfg.batch_size, tcfg), args.steps)
        e_u, e_p, e_f = (s * steps_per_epoch for s in (step_u, step_p, step_f))
        total_u += epochs * e_u
        total_p += epochs * e_p + ft_epochs * e_f + prune_s
        print(f"{j + 1},{full[j]},{pruned[j]},{prune_s:.3f},{before},{metrics.count_params(block)},"
              f"{e_u:.1f},{e_p:.1f},{e_f:.1f}")
    print(f"summary: pruning step {max(prune_times):.2f}s at most per stage; estimated training time "
          f"{total_p / 60:.1f} min pruned (ratio {args.ratio:g}, {ft_epochs:g} fine-tune epochs) vs "
          f"{total_u / 60:.1f} min unpruned = {total_p / total_u:.2f}x ({args.config}, "
          f"{torch.get_num_threads()} threads, {TRAIN_IMAGES} images/epoch)")


if __name__ == "__main__":
    main()
