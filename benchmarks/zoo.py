"""torchvision models in 4 stages on CIFAR-10, pruned by half: one timed greedy run each, and the
batch-64 CPU throughput of its export against the unpruned network's export.

    python benchmarks/zoo.py --data-dir ~/data/cifar10-jpeg --out bench-zoo \
        [--models torchvision:resnet18,torchvision:mobilenet_v2] [--epochs 2]

Each model (small-image stem, its registered split into 4 stages) trains greedily with the
cifar10-cpu optimiser and schedule, `--epochs` per stage, every stage pruned by half at
compress.at 0.5. The unpruned network to compare with is a run of the same model and split
trained for a few steps only: its export has the unpruned shapes (what throughput depends on),
and its accuracy is not reported. Both are exported as `prunegreedy export --with-head` writes
them (BatchNorm folded, the model's own classifier kept) and timed in one process, taking turns
within every repeat; the median is reported. Finished runs in OUT are reused.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch
from runs import PrintUI, run_once

import prunegreedy
from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.deploy.bench import time_alternating, torch_threads
from prunegreedy.train import runtime

RECIPE = "cifar10-cpu"  # its optimiser and schedule; the epochs are set here
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def exported(run: Path):
    """The run's export with its classifier (written once, next to the run), opened to time."""
    out = run.with_name(run.name + "-export")
    if not (out / "model.json").exists():
        prunegreedy.export_run(run, out, "native", with_head=True)
    return prunegreedy.open_export(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="torchvision:resnet18,torchvision:mobilenet_v2")
    ap.add_argument("--epochs", type=float, default=2.0, help="greedy epochs per stage")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    ui = PrintUI()
    base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)}, "run": {"quiet": True}},
                        config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load(RECIPE, base).data)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.models.split(","):
        name = arch.split(":")[-1]
        model = {"model": {"arch": arch}}
        pruned = run_once(f"{name}-r0.5", RECIPE, config.merge(model, {
            "train": {"epochs": args.epochs}, "compress": {"hook": "prune", "ratio": 0.5, "at": 0.5}}),
            base, args.out, ds, ui)
        shape = run_once(f"{name}-unpruned-shape", RECIPE, config.merge(model, {"train": {"epochs": 0.01}}),
                         base, args.out, ds, ui)
        nets = {"pruned": exported(args.out / f"{name}-r0.5"),
                "unpruned": exported(args.out / f"{name}-unpruned-shape")}
        x = torch.randn(64, *ds.image_shape, generator=torch.Generator().manual_seed(0))
        with torch_threads(torch.get_num_threads()):
            times = time_alternating(nets, x, args.repeats)
        speed = {k: 64 / statistics.median(v) for k, v in times.items()}
        rows.append((arch, pruned, shape, speed))
        print(f"{arch}: pruned by half, {pruned['seconds'] / 60:.1f} min, test {pruned['final_acc']:.2f} %, params "
              f"{pruned['params_with_head']:,} vs {shape['params_with_head']:,} unpruned, MACs "
              f"{pruned['macs_with_head']:,} vs {shape['macs_with_head']:,}; export at batch 64: "
              f"{speed['pruned']:,.0f} vs {speed['unpruned']:,.0f} images/s "
              f"({speed['pruned'] / speed['unpruned']:.2f}x)", flush=True)
    print("model,epochs_per_stage,minutes,test_acc,params,params_unpruned,macs,macs_unpruned,"
          "images_per_s_b64,images_per_s_b64_unpruned,threads")
    for arch, p, u, s in rows:
        print(f"{arch},{args.epochs:g},{p['seconds'] / 60:.1f},{p['final_acc']},{p['params_with_head']},"
              f"{u['params_with_head']},{p['macs_with_head']},{u['macs_with_head']},{s['pruned']:.0f},"
              f"{s['unpruned']:.0f},{torch.get_num_threads()}")


if __name__ == "__main__":
    main()
