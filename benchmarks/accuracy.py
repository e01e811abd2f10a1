"""Greedy vs end-to-end vs prune-after-training, same plan, at the same epoch and wall-clock budgets.

Runs, all from the CPU recipe (configs/cifar10-cpu*.yaml: the k=2 net at half width, 3/2/2/2
epochs, prune ratio 0.5 with half an epoch of fine-tuning per stage), seed 0:

    greedy-r0          greedy, no pruning                          9 epochs
    greedy-r0.5        greedy, every block pruned by half          9 + 4 x 0.5 fine-tune epochs
    e2e-epochs         end-to-end, no pruning                      9 epochs
    pat-epochs         end-to-end, pruned by half at the end       9 + 2 fine-tune epochs
    e2e-wall           end-to-end, as many epochs as greedy-r0.5's wall-clock time allows
    pat-wall           prune-after-training within the same wall-clock time (2 fine-tune epochs)

The wall-clock epochs come from the measured cost of an end-to-end epoch in e2e-epochs (and of
the fine-tuning in pat-epochs), so the budget holds on whatever device this runs. Finished runs
in OUT are kept, so an interrupted benchmark continues where it stopped. Prints a CSV and the
issue's comparisons; `prunegreedy report` of all runs goes to OUT/report.html.

    python benchmarks/accuracy.py --data-dir ~/data/cifar10 --out reports/benchmarks/accuracy-runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.trainers import greedy as pipeline
from prunegreedy.report import tables as report_tables
from prunegreedy.train import runtime
from prunegreedy.trainers import registry as trainers_registry
from prunegreedy.records import RunDir
from prunegreedy.fileio import read_json


class PrintUI:
    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def progress(self, desc: str):
        return None


def finished(path: Path) -> dict | None:
    if RunDir.is_run(path):
        meta = read_json(path / "run.json")
        if meta.get("status") == "finished":
            return meta
    return None


def run(name: str, recipe: str, over: dict, base: dict, out: Path, ds, device, ui) -> dict:
    path = out / name
    meta = finished(path)
    if meta is not None:
        ui.log(f"{name}: already finished in {path}")
        return meta
    if path.exists():
        path.rename(path.with_name(f"{name}.partial-{time.strftime('%Y%m%d-%H%M%S')}"))
    cfg = config.load(recipe, config._merge(base, over))
    ui.log(f"{name}: {recipe} {json.dumps(over)}")
    return trainers_registry.get_trainer(cfg)(cfg, RunDir.create(path), ds, device, ui).run()


def rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "stages.csv")


def epoch_cost(out: Path) -> tuple[float, float, float]:
    """(seconds per end-to-end epoch, overhead seconds of an end-to-end run, fine-tune seconds of PAT)."""
    e2e, meta = rows(out / "e2e-epochs"), read_json(out / "e2e-epochs" / "run.json")
    trained = e2e[e2e["phase"] == "trained"].iloc[0]
    per_epoch = trained["seconds"] / trained["epochs"]
    overhead = meta["seconds"] - trained["seconds"]  # evaluation, MAC counting, checkpoints
    pat = rows(out / "pat-epochs")
    finetune = pat.loc[pat["phase"].isin(["pruned", "finetuned"]), "seconds"].sum()
    return per_epoch, overhead, finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--csv", type=Path, help="also write the CSV here")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.setup(device, None)
    ui = PrintUI()
    base = config._merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)},
                          "run": {"device": args.device, "quiet": True}}, config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load("cifar10-cpu", base).data)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    e2e = {"train": {"trainer": "end-to-end"}}
    greedy_cfg = config.load("cifar10-cpu-compress", base)
    finetune_total = greedy_cfg.compress.finetune_epochs * len(pipeline.check(greedy_cfg))  # greedy's, in all
    pat = {"train": {"trainer": "end-to-end"}, "compress": {"finetune_epochs": finetune_total}}
    plan = [("greedy-r0", "cifar10-cpu", {}), ("greedy-r0.5", "cifar10-cpu-compress", {}),
            ("e2e-epochs", "cifar10-cpu", e2e), ("pat-epochs", "cifar10-cpu-compress", pat)]
    metas = {name: run(name, recipe, over, base, out, ds, device, ui) for name, recipe, over in plan}
    budget = metas["greedy-r0.5"]["seconds"]
    per_epoch, overhead, finetune = epoch_cost(out)
    e2e_epochs = round(max(0.25, (budget - overhead) / per_epoch), 2)
    pat_epochs = round(max(0.25, (budget - overhead - finetune) / per_epoch), 2)
    ui.log(f"wall-clock budget {budget:.0f}s: an end-to-end epoch costs {per_epoch:.1f}s (+{overhead:.0f}s "
           f"evaluation); end-to-end gets {e2e_epochs} epochs, prune-after-training {pat_epochs} + "
           f"{finetune_total:g} fine-tune")
    for name, recipe, over in [("e2e-wall", "cifar10-cpu", config._merge(e2e, {"train": {"total_epochs": e2e_epochs}})),
                               ("pat-wall", "cifar10-cpu-compress",
                                config._merge(pat, {"train": {"total_epochs": pat_epochs}}))]:
        metas[name] = run(name, recipe, over, base, out, ds, device, ui)
    names = list(metas)
    report_tables.write_report(report_tables.load_runs([out / n for n in names]), out)
    table = []
    for n in names:
        m, r = metas[n], rows(out / n)
        epochs = r.loc[r["epochs"].notna(), "epochs"].sum()
        table.append({"run": n, "trainer": "greedy" if n.startswith("greedy") else "end-to-end",
                      "pruned": "r0.5" in n or n.startswith("pat"), "epochs": round(float(epochs), 2),
                      "final_acc": m["final_acc"], "params": m["params"], "macs": m["macs"],
                      "seconds": m["seconds"], "device": m["device"], "amp": m["amp"]})
    df = pd.DataFrame(table)
    text = df.to_csv(index=False)
    print(text, end="")
    if args.csv:
        args.csv.write_text(text)
    acc = df.set_index("run")["final_acc"]
    params = df.set_index("run")["params"]
    gap = acc["e2e-wall"] - acc["greedy-r0.5"]
    print(f"summary: same wall-clock ({budget / 60:.1f} min, {device}): greedy pruned 0.5 {acc['greedy-r0.5']:.2f}% "
          f"vs end-to-end unpruned {acc['e2e-wall']:.2f}% (gap {gap:.2f} points, target <= 1.5: "
          f"{'met' if gap <= 1.5 else 'missed'}) with {params['e2e-wall'] / params['greedy-r0.5']:.2f}x fewer "
          f"parameters (target >= 3.5x); vs prune-after-training at equal parameters {acc['pat-wall']:.2f}% "
          f"(greedy {'ahead' if acc['greedy-r0.5'] > acc['pat-wall'] else 'behind'} by "
          f"{abs(acc['greedy-r0.5'] - acc['pat-wall']):.2f}). Same epochs: greedy r0 {acc['greedy-r0']:.2f}% vs "
          f"end-to-end {acc['e2e-epochs']:.2f}%; greedy r0.5 {acc['greedy-r0.5']:.2f}% vs prune-after-training "
          f"{acc['pat-epochs']:.2f}%", flush=True)
    print(f"report: {out / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
