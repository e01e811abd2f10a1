"""Progressive linear separability: a linear probe on every block's features, for each run.

Per run folder: the last stage checkpoint (all blocks), the run's dataset (its config.yaml data
section; --dataset and --data-dir replace those keys) normalised with the run's mean and std,
--train-limit training images drawn at random with a fixed seed (image folders list them class by
class, so the first N would hold only a few classes) and the whole test split. Every block
is probed as prunegreedy.probe describes: features average-pooled to 2x2, standardised,
multinomial logistic regression by full-batch L-BFGS. Prints a CSV and a summary line.

    python benchmarks/separability.py runs/a [runs/b ...] [--data-dir D] [--train-limit 10000]
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from prunegreedy.deploy.network import load_trained
from prunegreedy import config
from prunegreedy.data import base as data_base
from prunegreedy.data import registry as data_registry
from prunegreedy.measure import probe
from prunegreedy import records
from prunegreedy.fileio import read_yaml
from prunegreedy.train import runtime


def last_checkpoint(run: Path) -> Path:
    ckpt = Path(run) / "checkpoints"
    stages = [int(m.group(1)) for p in ckpt.glob("stage-*.json") if (m := re.fullmatch(r"stage-(\d+)\.json", p.name))]
    if not stages:
        raise SystemExit(f"{run}: no stage checkpoint in {ckpt}")
    return ckpt / f"stage-{max(stages)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--dataset", help="default: the run's")
    ap.add_argument("--data-dir", help="default: the run's")
    ap.add_argument("--train-limit", type=int, default=10_000)
    ap.add_argument("--weight-decay", type=float, default=1e-3,
                    help="L2 penalty 0.5 * wd * |W|^2 on the mean cross-entropy (SGD weight decay wd)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    runtime.setup(torch.device("cpu"), args.threads)
    start = time.perf_counter()
    print("run,block,feature_dim,probe_train_acc,probe_test_acc")
    curves = []
    for run in args.runs:
        net = load_trained(last_checkpoint(run))[0]
        section = read_yaml(run / "config.yaml")["data"]
        section.update({"train_limit": None, "test_limit": None})
        section.update({k: v for k, v in (("name", args.dataset), ("data_dir", args.data_dir)) if v is not None})
        ds = data_registry.load_dataset(config.from_dict({"data": section}).data)
        pick = torch.randperm(len(ds.train_x), generator=torch.Generator().manual_seed(0))[:args.train_limit]
        ds.train_x, ds.train_y = ds.train_x[pick], ds.train_y[pick]
        meta = records.read_json(run / records.RUN_FILE)["dataset"]  # the statistics the net was trained with
        norm = data_base.Normalize(meta["mean"], meta["std"], torch.device("cpu"), channels_last=True)
        rows = probe.separability(net.modules_of(), ds, norm, args.weight_decay)
        for r in rows:
            print(f"{run},{r['block']},{r['dim']},{r['train_acc']:.2f},{r['test_acc']:.2f}")
        accs = " -> ".join(f"{r['test_acc']:.1f}" for r in rows)
        curves.append(f"{run.name} ({ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test) {accs}")
    print(f"summary: probe test accuracy (%) by block: {'; '.join(curves)} (2x2 average pool, L-BFGS, "
          f"weight decay {args.weight_decay:g}, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
