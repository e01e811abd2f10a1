"""A trained network compressed by half, three ways, from the same trained weights (a sketch: not run
on full CIFAR-10 yet, no numbers measured):

  (a) --trainer compress: stage by stage, each stage cut, refit to the original's outputs and
      fine-tuned alone against the original's features;
  (b) Torch-Pruning's own recipe: one global group-L1 ranking over the whole trained network, to
      (a)'s MACs within 2 %, then end-to-end fine-tuning for the seconds (a) took;
  (c) prune-after-training on the trained weights: every stage cut with no repair (--trainer
      compress, compress.finetune_epochs 0, compress.reconstruct 0), then the whole network
      fine-tuned on the labels (compress.finetune_all_epochs) for about the seconds (a) took.

    python benchmarks/compress_trained.py --data-dir ~/data/cifar10-jpeg --out bench-compress [--model resnet56]

The network is trained once end to end (OUT/trained, train.total_epochs --epochs) and its weights
saved as OUT/trained.safetensors. One run after another (compare times only from an idle machine);
finished runs in OUT are reused. Peak training memory is not measured here yet (to do: each
method in its own process, its peak resident memory or torch.cuda.max_memory_allocated).
Prints one CSV row per run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from models import tp_global
from runs import PrintUI, run_once
from safetensors.torch import save_file
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=float, default=16.0, help="end-to-end epochs of the trained network")
    ap.add_argument("--stage-epochs", type=float, default=1.0, help="(a): fine-tuning epochs of each stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    ui = PrintUI()
    # the recipe's own width options are for its plan, not for a named model
    model = {"arch": args.model, "width_mult": 1.0, "widths": None}
    base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)}, "model": model,
                         "train": {"epochs": 1.0},  # per stage: unused here, the recipe's list is for its plan
                         "run": {"quiet": True, "seed": args.seed}}, config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load(RECIPE, base).data)
    args.out.mkdir(parents=True, exist_ok=True)
    metas = {"trained": run_once("trained", RECIPE, {"train": {"trainer": "end-to-end", "total_epochs": args.epochs}},
                                 base, args.out, ds, ui)}
    weights = args.out / "trained.safetensors"
    if not weights.exists():
        state = prunegreedy.load_network(args.out / "trained").state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    epoch_s = float(pd.read_csv(args.out / "trained" / "stages.csv")["seconds"].sum()) / args.epochs
    trained = {"model": {"weights": str(weights)}, "train": {"trainer": "compress"},
               "compress": {"at": 1.0, "cuts": 1, "rewind": False}}  # the recipe cuts inside its schedule
    metas["stagewise"] = run_once("stagewise", RECIPE, config.merge(trained, {
        "compress": {"hook": "prune", "ratio": 0.5, "finetune_epochs": args.stage_epochs}}), base, args.out, ds, ui)
    budget_epochs = round(metas["stagewise"]["seconds"] / epoch_s, 2)  # what (a)'s seconds buy end to end
    metas["cut-then-finetune"] = run_once("cut-then-finetune", RECIPE, config.merge(trained, {
        "compress": {"hook": "prune", "ratio": 0.5, "finetune_epochs": 0, "reconstruct": 0,
                     "finetune_all_epochs": budget_epochs}}), base, args.out, ds, ui)
    metas["tp-global"] = tp_recipe(args, metas["stagewise"]["macs"], budget_epochs, base, ds)
    print("run,trainer,test_acc,params,macs,seconds")
    for name, m in metas.items():
        print(f"{name},{m.get('trainer')},{m['final_acc']},{m['params']},{m['macs']},{m['seconds']}")


def tp_recipe(args, target_macs: int, epochs: float, base: dict, ds) -> dict:
    """Torch-Pruning's global group-L1 cut of the trained network to `target_macs`, then `epochs` of
    end-to-end fine-tuning; recorded as tp-global/result.json."""
    path = args.out / "tp-global"
    if (path / "result.json").exists():
        return json.loads((path / "result.json").read_text())
    path.mkdir(parents=True, exist_ok=True)
    model = prunegreedy.load_network(args.out / "trained")
    pruned = tp_global(model, target_macs, ds.image_shape).train().requires_grad_(True)
    cfg = config.load(RECIPE, base)
    norm = Normalize(ds.mean, ds.std, torch.device("cpu"), cfg.train.channels_last)
    pruned = pruned.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(args.seed)
    stats = train(Chain([(pruned, nn.Identity())]), ds, norm, cfg.train, epochs, cfg.compress.finetune_lr,
                  cfg.compress.finetune_schedule, torch.device("cpu"), gen).stats[0]
    acc, _ = evaluate(nn.Sequential(), pruned, nn.Identity(), ds, norm, 500, torch.device("cpu"))
    result = {"trainer": "torch-pruning", "final_acc": round(acc, 2), "params": count_params(pruned),
              "macs": count_macs(pruned, ds.image_shape), "seconds": round(stats.seconds, 1)}
    (path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
