"""Your own network on CIFAR-10: a CIFAR ResNet trained greedily in 3 stages and pruned by half inside
the schedule, against end-to-end training followed by (a) prune-after-training and (b) Torch-Pruning's
own recipe (global group-L1 pruning to the same MACs, then fine-tuning), all at the greedy run's
wall clock; and the same net unpruned, greedy against end-to-end at equal wall clock.

    python benchmarks/models.py --data-dir ~/data/cifar10-jpeg --out bench-models [--model resnet20] [--seed 0]
    python benchmarks/models.py ... --out bench-models-s1 --seed 1 --pruned-only   # the pruned runs again

One run after another (compare times only from an idle machine). The end-to-end runs get as many
epochs as fit in the greedy run's seconds: an end-to-end epoch's training seconds come from a quarter-epoch
probe, whose setup and evaluation seconds are taken off the budget.
Finished runs in OUT are reused, so an interrupted benchmark continues. Prints one CSV row per run.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pandas as pd
import torch
import torch_pruning as tp
from runs import PrintUI, finished, run_once
from torch import nn

import prunegreedy
from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.data.base import Normalize
from prunegreedy.measure.size import count_macs, count_params
from prunegreedy.train import runtime
from prunegreedy.train.evaluate import evaluate
from prunegreedy.train.loop import Chain, train

RECIPE = "cifar10-cpu"  # its optimiser and schedule; the epochs are set per run here
GREEDY_EPOCHS = "6,5,5"  # per stage, resnet20/56's three resolution stages


def tp_global(model: nn.Module, target_macs: int, shape: tuple[int, int, int],
              round_to: int | None = None) -> nn.Module:
    """Torch-Pruning's recipe: one global ranking of group-L1 scores over the whole network (the
    classifier kept), its ratio bisected until the MACs are within 2 % of `target_macs` (else the
    closest cut tried). `round_to`: every kept width a multiple of it (Torch-Pruning's option; on an
    avx512_bf16 CPU widths like 11 or 15 train about 2x slower than multiples of 8)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model).eval()
        pruner = tp.pruner.MetaPruner(trial, torch.zeros(1, *shape), tp.importance.GroupMagnitudeImportance(p=1),
                                      global_pruning=True, pruning_ratio=ratio, ignored_layers=[trial.fc],
                                      round_to=round_to)
        pruner.step()
        macs = count_macs(trial, shape)
        if abs(macs - target_macs) <= 0.02 * target_macs:
            return trial
        if best is None or abs(macs - target_macs) < best[0]:
            best = (abs(macs - target_macs), trial)
        lo, hi = (ratio, hi) if macs > target_macs else (lo, ratio)
    return best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", default=GREEDY_EPOCHS, help="greedy epochs per stage")
    ap.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    ap.add_argument("--pruned-only", action="store_true", help="only the runs pruned by half (and the probe)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    ui = PrintUI()
    base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)},
                         "model": {"arch": args.model}, "train": {"epochs": args.epochs},
                         "run": {"quiet": True, "seed": args.seed}}, config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load(RECIPE, base).data)
    args.out.mkdir(parents=True, exist_ok=True)
    cut = {"compress": {"hook": "prune", "ratio": 0.5, "at": 0.5}}
    metas = {} if args.pruned_only else {"greedy-r0": run_once("greedy-r0", RECIPE, {}, base, args.out, ds, ui)}
    metas["greedy-r0.5"] = run_once("greedy-r0.5", RECIPE, cut, base, args.out, ds, ui)
    probe = run_once("e2e-probe", RECIPE, {"train": {"trainer": "end-to-end", "total_epochs": 0.25}}, base, args.out,
                     ds, ui)
    trained_s = float(pd.read_csv(args.out / "e2e-probe" / "stages.csv")["seconds"].sum())
    epoch_s, overhead_s = trained_s / 0.25, probe["seconds"] - trained_s  # the overhead: setup and evaluation
    budgets = [("pat-wall", metas["greedy-r0.5"]["seconds"])]
    if not args.pruned_only:
        budgets.insert(0, ("e2e-wall", metas["greedy-r0"]["seconds"]))
    for name, budget in budgets:
        epochs = round((budget - overhead_s) / epoch_s, 2)
        over = {"train": {"trainer": "end-to-end", "total_epochs": epochs if name == "e2e-wall" else 0.8 * epochs}}
        if name == "pat-wall":  # a fifth of the time fine-tunes after the cut
            over["compress"] = {"hook": "prune", "ratio": 0.5, "at": 1.0, "finetune_epochs": round(0.2 * epochs, 2)}
        metas[name] = run_once(name, RECIPE, over, base, args.out, ds, ui)
    metas["tp-wall"] = tp_recipe(args, metas, base, ds, epoch_s, overhead_s, ui)
    print("run,trainer,test_acc,params,macs,seconds")
    for name, m in metas.items():
        print(f"{name},{m.get('trainer')},{m['final_acc']},{m['params']},{m['macs']},{m['seconds']}")
    g, p, t = (metas[k] for k in ("greedy-r0.5", "pat-wall", "tp-wall"))
    line = (f"summary ({args.model}, seed {args.seed}): pruned by half at {g['seconds'] / 60:.1f} min: greedy "
            f"{g['final_acc']:.2f} %, end-to-end + prune-after-training {p['final_acc']:.2f} %, end-to-end + "
            f"Torch-Pruning global group-L1 {t['final_acc']:.2f} % "
            f"(MACs {g['macs']:,} / {p['macs']:,} / {t['macs']:,})")
    if not args.pruned_only:
        line += (f"; unpruned at {metas['greedy-r0']['seconds'] / 60:.1f} min: greedy "
                 f"{metas['greedy-r0']['final_acc']:.2f} %, end-to-end {metas['e2e-wall']['final_acc']:.2f} %")
    print(line)


def tp_recipe(args, metas: dict, base: dict, ds, epoch_s: float, overhead_s: float, ui) -> dict:
    """End-to-end training for 0.8 of the pruned greedy run's seconds, Torch-Pruning's global cut to
    the greedy run's MACs, fine-tuning for the rest; recorded as tp-wall/result.json."""
    path = args.out / "tp-wall"
    if (path / "result.json").exists():
        return json.loads((path / "result.json").read_text())
    budget = metas["greedy-r0.5"]["seconds"] - overhead_s
    epochs = round(0.8 * budget / epoch_s, 2)
    trained = finished(path / "trained") or run_once(
        "trained", RECIPE, {"train": {"trainer": "end-to-end", "total_epochs": epochs}}, base, path, ds, ui)
    model = prunegreedy.load_network(path / "trained")
    pruned = tp_global(model, metas["greedy-r0.5"]["macs"], ds.image_shape).train().requires_grad_(True)
    cfg = config.load(RECIPE, base)
    norm = Normalize(ds.mean, ds.std, torch.device("cpu"), cfg.train.channels_last)
    pruned = pruned.to(memory_format=torch.channels_last)
    stats = train(Chain([(pruned, nn.Identity())]), ds, norm, cfg.train, round(0.2 * budget / epoch_s, 2),
                  cfg.compress.finetune_lr, cfg.compress.finetune_schedule, torch.device("cpu"),
                  torch.Generator().manual_seed(args.seed)).stats[0]
    acc, _ = evaluate(nn.Sequential(), pruned, nn.Identity(), ds, norm, 500, torch.device("cpu"))
    result = {"trainer": "end-to-end+tp", "final_acc": round(acc, 2), "params": count_params(pruned),
              "macs": count_macs(pruned, ds.image_shape), "seconds": round(trained["seconds"] + stats.seconds, 1)}
    (path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
