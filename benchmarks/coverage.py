"""Which torchvision classifiers prunegreedy takes with no --split: every classification model
under 60M parameters, with its default split (nn.autosplit), on the bundled CIFAR-10 sample.

    python benchmarks/coverage.py [--models resnet18,convnext_tiny] [--plan-only] \
        [--csv reports/benchmarks/coverage.csv] [--md reports/benchmarks/coverage.md]

For each model, smallest first: a short greedy fit with a cut at 0.5 (one step per stage on 256
images; the run plans first, as `plan` does, and run.json keeps the MACs before and after the
cut), its export (native, with the classifier) and the reload of both the run's network
(load_network) and the export (open_export), each run on an image. A model works when all of these do and the cut leaves fewer MACs; it is refused when
prunegreedy says why in one line (a PrunegreedyError); anything else is a crash, with its first
line. Prints one row per model as it goes, then the counts; writes the CSV and a markdown table
after every model. A model that worked or was refused in the CSV already is not run again.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import prunegreedy
from prunegreedy.errors import PrunegreedyError
from prunegreedy.fileio import read_yaml
from prunegreedy.nn.models import registered_split

LIMIT = 60_000_000  # parameters, as torchvision builds the model (1000 classes)
FIT = {"data.train_limit": 256, "data.test_limit": 64, "train.batch_size": 64, "compress.reconstruct": 0,
       "compress.finetune_epochs": 0, "run.threads": 2}
FAMILIES = ["resnet18", "resnext50_32x4d", "regnet_x_400mf", "mobilenet_v2", "mobilenet_v3_small",
            "efficientnet_b0", "shufflenet_v2_x0_5", "densenet121", "convnext_tiny", "squeezenet1_1", "mnasnet0_5"]
COLUMNS = ["model", "params", "result", "split", "macs", "macs_after", "seconds", "why"]
warnings.filterwarnings("ignore")


def classifiers(limit: int = LIMIT) -> list[tuple[str, int]]:
    """(name, parameters) of every torchvision classification model under `limit` parameters, as
    its weights' metadata gives them (nothing downloaded), else counted on the meta device."""
    import torchvision

    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            n = int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
        except (KeyError, AttributeError, ValueError):
            with torch.device("meta"):
                n = sum(p.numel() for p in torchvision.models.get_model(name, weights=None).parameters())
        if n < limit:
            out.append((name, n))
    return out


def check(name: str, work: Path, plan_only: bool = False) -> dict:
    """One model through plan, a short greedy fit with a cut, export and reload."""
    model = f"torchvision:{name}"
    row = {"model": name, "split": "", "macs": "", "macs_after": "", "why": ""}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        if plan_only:
            df = prunegreedy.plan(dataset="cifar10-sample", model=model, prune_ratio=0.5)
            totals, row["split"] = df.attrs["totals"], ",".join(df["last"])
        else:  # the run plans at its start, as `plan` does: its run.json keeps the plan
            run = prunegreedy.fit(out=work / name, dataset="cifar10-sample", model=model, prune_ratio=0.5,
                                  epochs=0.25, quiet=True, set=FIT)
            totals = run.meta["planned"]["totals"]
            split = read_yaml(run.path / "config.yaml")["model"]["split"] or registered_split(model)
            row["split"] = ",".join(split)
        row.update(macs=totals["macs"], macs_after=totals["macs_after"])
        if not totals["macs_after"] < totals["macs"]:
            raise RuntimeError(f"the cut leaves {totals['macs_after']:,} of {totals['macs']:,} MACs")
        if not plan_only:
            x = torch.zeros(1, 3, 32, 32)
            with torch.no_grad():
                assert prunegreedy.load_network(run.path).eval()(x).shape == (1, 10)
                prunegreedy.export_run(run.path, work / f"{name}-export", "native", with_head=True)
                assert prunegreedy.open_export(work / f"{name}-export")(x).shape == (1, 10)
        row["result"] = "works"
    except PrunegreedyError as e:
        row.update(result="refused", why=str(e).splitlines()[0])
    except Exception as e:  # a crash: the thing this benchmark is here to find
        row.update(result="crash", why=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(rows: list[dict], plan_only: bool) -> str:
    counts = {r: sum(1 for x in rows if x["result"] == r) for r in ("works", "refused", "crash")}
    what = "plan at 0.5" if plan_only else "plan at 0.5, a short greedy fit with a cut, export and reload"
    out = [f"{counts['works']} of {len(rows)} torchvision classifiers under 60M parameters work with no --split "
           f"({what}); {counts['refused']} refused in one line, {counts['crash']} crashed.", "",
           "| model | params | result | split (default) | MACs before -> after the cut | why |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.1f}M -> {r['macs_after'] / 1e6:.1f}M" if r["macs"] != "" else "-"
        out.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['result']} | {r['split'] or '-'} | {macs} | "
                   f"{r['why'].replace('|', '/') or '-'} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated torchvision names (default: all under 60M parameters)")
    ap.add_argument("--families", action="store_true", help="one model per family only")
    ap.add_argument("--plan-only", action="store_true", help="plan only: no fit, export or reload")
    ap.add_argument("--csv", default="reports/benchmarks/coverage.csv")
    ap.add_argument("--md", default="reports/benchmarks/coverage.md")
    args = ap.parse_args()
    sizes = dict(classifiers())
    by_size = [n for n, _ in sorted(sizes.items(), key=lambda kv: kv[1])]  # the small ones first
    names = args.models.split(",") if args.models else FAMILIES if args.families else by_size
    kept = {}  # the rows of an earlier, unfinished pass over the same CSV: a model that worked or was refused
    if Path(args.csv).exists():
        with open(args.csv, newline="") as f:
            kept = {r["model"]: r for r in csv.DictReader(f) if r["result"] in ("works", "refused")}
        for r in kept.values():
            r.update({k: int(r[k]) if r[k] else "" for k in ("params", "macs", "macs_after")},
                     seconds=float(r["seconds"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in kept:
                rows.append(kept[name])
                continue
            row = check(name, Path(tmp), args.plan_only)
            row["params"] = sizes.get(name, 0)
            rows.append(row)
            print(f"{name:24s} {row['result']:8s} {row['seconds']:7.1f}s  {row['split']}  {row['why']}", flush=True)
            for path in (Path(args.csv), Path(args.md)):
                path.parent.mkdir(parents=True, exist_ok=True)
            with open(args.csv, "w", newline="") as f:  # rewritten after every model: a partial table survives
                w = csv.DictWriter(f, COLUMNS)
                w.writeheader()
                w.writerows(rows)
            Path(args.md).write_text(markdown(rows, args.plan_only))
    print(markdown(rows, args.plan_only).splitlines()[0])


if __name__ == "__main__":
    main()
