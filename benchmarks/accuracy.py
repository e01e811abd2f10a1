"""Greedy, decoupled, end-to-end and prune-after-training on the same plan at the same wall clock.

Runs, all from the CPU recipe (configs/cifar10-cpu*.yaml: the k=2 net at half width with pooled
heads, prune ratio 0.5), seed 0, at the wall clock W of greedy-r0.5:

    greedy-r0          greedy, no pruning (the recipe's per-stage epochs)
    greedy-r0.5        greedy, every block pruned by half after its training, fine-tuned half an epoch (defines W)
    greedy-r0.5-at     greedy, every block pruned by half at compress.at of its schedule, no fine-tuning (the
                       cifar10-cpu-compress recipe at its default compress.at 0.5)
    dgl-wall           decoupled (every block at once), no pruning, as many epochs as W allows
    dgl-r0.5-wall      decoupled, every block pruned by half at compress.at of the common schedule
    e2e-wall           end-to-end, no pruning, as many epochs as W allows
    pat-wall           prune-after-training within W (the greedy run's fine-tuning epochs in all)

The wall-clock epochs come from the measured cost of an epoch in two short probes (e2e-probe and
dgl-probe, a quarter epoch each, not reported), so the budget holds on whatever device this
runs. Finished runs in OUT are kept, so an interrupted benchmark continues where it stopped.
Prints a CSV and the issues' comparisons; `prunegreedy report` of all runs goes to OUT/report.html.

    python benchmarks/accuracy.py --data-dir ~/data/cifar10 --out reports/benchmarks/accuracy-cpu2-runs \
        --set train.amp=off [--at 0.5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from runs import PrintUI, run_once

from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.trainers import common as pipeline
from prunegreedy.report import tables as report_tables
from prunegreedy.train import runtime
from prunegreedy.fileio import read_json


def rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "stages.csv")


def epoch_cost(out: Path, name: str) -> tuple[float, float]:
    """(seconds per epoch, seconds of everything else: evaluation, MAC counting, checkpoints) of a probe."""
    r, meta = rows(out / name), read_json(out / name / "run.json")
    trained = r[r["phase"] == "trained"]
    per_epoch = trained["seconds"].max() / trained["epochs"].max()
    return per_epoch, meta["seconds"] - trained["seconds"].max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--csv", type=Path, help="also write the CSV here")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    ap.add_argument("--at", type=float, default=0.5, help="compress.at of the runs that prune inside the schedule")
    args = ap.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.setup(device, None)
    ui = PrintUI()
    base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)},
                          "run": {"device": args.device, "quiet": True}}, config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load("cifar10-cpu", base).data)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    e2e = {"train": {"trainer": "end-to-end"}}
    after = {"compress": {"at": 1.0, "finetune_epochs": 0.5}}  # cut after training, half an epoch of fine-tuning
    greedy_cfg = config.load("cifar10-cpu-compress", config.merge(base, after))
    finetune_total = greedy_cfg.compress.finetune() * len(pipeline.check(greedy_cfg))  # greedy's, in all
    pat = {"train": {"trainer": "end-to-end"}, "compress": {"finetune_epochs": finetune_total, "at": 1.0}}
    dgl = {"train": {"trainer": "decoupled"}}
    at = {"compress": {"at": args.at, "finetune_epochs": 0}}
    plan = [("greedy-r0", "cifar10-cpu", {}), ("greedy-r0.5", "cifar10-cpu-compress", after),
            ("greedy-r0.5-at", "cifar10-cpu-compress", at),
            ("e2e-probe", "cifar10-cpu", config.merge(e2e, {"train": {"total_epochs": 0.25}})),
            ("dgl-probe", "cifar10-cpu", config.merge(dgl, {"train": {"total_epochs": 0.25}}))]
    metas = {name: run_once(name, recipe, over, base, out, ds, ui) for name, recipe, over in plan}
    budget = metas["greedy-r0.5"]["seconds"]
    e2e_epoch, e2e_rest = epoch_cost(out, "e2e-probe")
    dgl_epoch, dgl_rest = epoch_cost(out, "dgl-probe")
    fit = lambda per_epoch, rest: round(max(0.25, (budget - rest) / per_epoch), 2)  # noqa: E731
    e2e_epochs, dgl_epochs = fit(e2e_epoch, e2e_rest), fit(dgl_epoch, dgl_rest)
    # Prune-after-training fine-tunes the pruned net (about a quarter of the MACs) for finetune_total epochs.
    pat_epochs = round(max(0.25, (budget - e2e_rest - 0.3 * finetune_total * e2e_epoch) / e2e_epoch), 2)
    ui.log(f"wall-clock budget {budget:.0f}s: an end-to-end epoch costs {e2e_epoch:.1f}s, a decoupled one "
           f"{dgl_epoch:.1f}s; end-to-end gets {e2e_epochs} epochs, prune-after-training {pat_epochs} + "
           f"{finetune_total:g} fine-tune, decoupled {dgl_epochs}")
    for name, recipe, over in [
            ("dgl-wall", "cifar10-cpu", config.merge(dgl, {"train": {"total_epochs": dgl_epochs}})),
            ("dgl-r0.5-wall", "cifar10-cpu-compress", config.merge(config.merge(dgl, at),
                                                                   {"train": {"total_epochs": dgl_epochs}})),
            ("e2e-wall", "cifar10-cpu", config.merge(e2e, {"train": {"total_epochs": e2e_epochs}})),
            ("pat-wall", "cifar10-cpu-compress", config.merge(pat, {"train": {"total_epochs": pat_epochs}}))]:
        metas[name] = run_once(name, recipe, over, base, out, ds, ui)
    for probe in ("e2e-probe", "dgl-probe"):
        metas.pop(probe)
    names = list(metas)
    report_tables.write_report(report_tables.load_runs([out / n for n in names]), out)
    table = []
    for n in names:
        m, r = metas[n], rows(out / n)
        table.append({"run": n, "trainer": m.get("trainer", "greedy"), "pruned": "r0.5" in n or n.startswith("pat"),
                      "epochs": round(float(r.loc[r["epochs"].notna(), "epochs"].max()), 2),
                      "final_acc": m["final_acc"], "ensemble_acc": m.get("ensemble_acc"), "params": m["params"],
                      "macs": m["macs"], "seconds": m["seconds"], "device": m["device"], "amp": m["amp"]})
    df = pd.DataFrame(table)
    text = df.to_csv(index=False)
    print(text, end="")
    if args.csv:
        args.csv.write_text(text)
    acc = df.set_index("run")["final_acc"]
    seconds = df.set_index("run")["seconds"]
    within = lambda names: [n for n in names if seconds[n] <= 1.05 * budget]  # noqa: E731  (the wall clock W)
    best_pruned = max(within(["greedy-r0.5", "greedy-r0.5-at", "dgl-r0.5-wall"]), key=lambda n: acc[n])
    best = max(within(["greedy-r0", "dgl-wall"]), key=lambda n: acc[n])
    drop = {n: acc[u] - acc[p] for n, u, p in [("greedy", "greedy-r0", "greedy-r0.5-at"),
                                                ("decoupled", "dgl-wall", "dgl-r0.5-wall")]}
    print(f"summary: same wall clock ({budget / 60:.1f} min, {device}, amp {metas['greedy-r0']['amp']}): best pruned "
          f"0.5 {best_pruned} {acc[best_pruned]:.2f}% vs prune-after-training {acc['pat-wall']:.2f}% "
          f"({'ahead' if acc[best_pruned] > acc['pat-wall'] else 'behind'}); best unpruned {best} {acc[best]:.2f}% vs "
          f"end-to-end {acc['e2e-wall']:.2f}% ({'level or ahead' if acc[best] >= acc['e2e-wall'] else 'behind'}); "
          f"pruning at compress.at {args.at:g} costs greedy {drop['greedy']:.2f} and decoupled "
          f"{drop['decoupled']:.2f} points (target <= 0.5)", flush=True)
    print(f"report: {out / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
