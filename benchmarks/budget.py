"""Pruning to a budget (issue 15): the CPU recipe at three MACs budgets and a uniform-ratio baseline.

Runs, all from configs/cifar10-cpu.yaml, seed 0, into OUT:

    macs-0.5x      --target-macs 0.5x    the ratios chosen stage by stage from held-out sensitivity
    macs-0.25x     --target-macs 0.25x
    macs-0.1x      --target-macs 0.1x
    uniform-0.5    every block pruned by half (about 0.25x of the MACs), for comparison; it measures
                   sensitivity too (compress.sensitivity), so it trains on the same images as the
                   budgeted runs (data.holdout held out) and its sensitivity cost is known

Finished runs in OUT are kept, so an interrupted benchmark continues where it stopped (an
unfinished leftover is moved aside). Prints a CSV (one row per run: the budget, the final MACs,
whether they are within 2 % of the target and never above it, final test accuracy, the seconds
spent measuring sensitivity against the run's) and a summary line; `prunegreedy report` of all
runs goes to OUT/report.html.

    python benchmarks/budget.py --data-dir ~/data/cifar10 --out reports/benchmarks/budget-runs
    # smoke test on the bundled sample (seconds; numbers meaningless):
    python benchmarks/budget.py --dataset cifar10-sample --out /tmp/budget --set train.epochs=0.1 \\
        --set data.train_limit=600 --set data.holdout=100 --set compress.finetune_epochs=0.05
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from runs import PrintUI, run_once

from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.report import tables as report_tables
from prunegreedy.train import runtime

RECIPE = "cifar10-cpu"
BUDGETS = ("0.25x", "0.5x", "0.1x")
WITHIN = 0.02  # the goal: final MACs within 2 % of the target, never above it


def row(name: str, meta: dict) -> dict:
    b = meta.get("budget")
    sens = sum((meta.get("sensitivity") or {}).get("seconds", {}).values())
    out = {"run": name, "target": f"macs {b['request']}" if b else "ratio 0.5", "target_macs": b["target"] if b else "",
           "macs": meta["macs"], "of_target": f"{meta['macs'] / b['target']:.4f}" if b else "",
           "within_2pct": (meta["macs"] >= (1 - WITHIN) * b["target"]) if b else "",
           "never_above": (meta["macs"] <= b["target"]) if b else "",
           "ratios": ",".join(f"{r:g}" for r in (b["ratios"] if b else [0.5] * len(meta["widths"]))),
           "widths": ",".join(map(str, meta["widths"])), "final_acc": meta["final_acc"],
           "sensitivity_s": round(sens, 1), "run_s": meta["seconds"],
           "sensitivity_share": f"{sens / meta['seconds']:.4f}" if meta["seconds"] else ""}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="CIFAR-10 (cifar-10-batches-py or image folder)")
    ap.add_argument("--dataset", default="cifar10", help="cifar10, or cifar10-sample for a smoke test")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--csv", type=Path, help="also write the CSV here")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.setup(device, None)
    ui = PrintUI()
    data = {"name": args.dataset, **({"data_dir": str(args.data_dir)} if args.data_dir else {})}
    base = config._merge({"data": data, "run": {"device": args.device, "quiet": True, "seed": 0}},
                         config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load(RECIPE, base).data)
    args.out.mkdir(parents=True, exist_ok=True)
    # The comparison at uniform 0.5's MACs (0.25x) first, so an interrupted benchmark has it.
    plan = [(f"macs-{b}", {"compress": {"hook": "prune", "target_macs": b}}) for b in BUDGETS]
    plan.insert(1, ("uniform-0.5", {"compress": {"hook": "prune", "ratio": 0.5, "sensitivity": True}}))
    metas = {name: run_once(name, RECIPE, over, base, args.out, ds, device, ui) for name, over in plan}
    report_tables.write_report(report_tables.load_runs([args.out / n for n in metas]), args.out)

    rows = [row(n, m) for n, m in metas.items()]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    print(buf.getvalue(), end="")
    if args.csv:
        args.csv.write_text(buf.getvalue())
    budgeted = [r for r in rows if r["target_macs"] != ""]
    ok = sum(1 for r in budgeted if r["within_2pct"] and r["never_above"])
    uni = next(r for r in rows if r["run"] == "uniform-0.5")
    near = next(r for r in budgeted if r["target"] == "macs 0.25x")  # the budget at uniform 0.5's MACs
    unpruned = metas[budgeted[0]["run"]]["budget"]["unpruned"]
    accs = ", ".join(f"{r['target'].split()[1]} {r['final_acc']:.2f} %" for r in budgeted)
    share = sum(r["sensitivity_s"] for r in rows) / sum(r["run_s"] for r in rows)
    print(f"summary: {ok}/{len(budgeted)} budgets within 2 % of the target and never above; final test acc {accs}; "
          f"uniform 0.5: {uni['final_acc']:.2f} % at {uni['macs'] / unpruned:.3f}x of the unpruned MACs, the 0.25x "
          f"budget {near['final_acc'] - uni['final_acc']:+.2f} points against it (target >= +0.5); "
          f"sensitivity took {100 * share:.1f} % of the run time")


if __name__ == "__main__":
    main()
