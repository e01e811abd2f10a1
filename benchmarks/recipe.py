"""Greedy + pruning against the strongest alternative, all with the fast recipe (airbench's parts):

    (a) greedy-r0.5    cifar10-fast-compress: greedy, every stage pruned by half inside its schedule (the headline)
    (b) small-e2e      the network of (a)'s final widths (fastcifar-W1-W2-W3) trained directly, end to end
    (c) pat / tp       the wide network end to end, then pruned by half: prune-after-training (every stage
                       cut by L1, scope all) and Torch-Pruning's global group-L1 to (a)'s MACs, each fine-tuned
                       for a fifth of the time
    (d) greedy-r0      cifar10-fast, unpruned
    (e) wide-e2e       the wide network end to end, unpruned
    (g) greedy-r0-at-a cifar10-fast, unpruned, its stages' epochs scaled to fit (a)'s wall clock: the
                       baseline of "pruning inside the schedule costs at most 1 point at equal wall clock"
    (f) cpu-compress, cpu   today's cifar10-cpu-compress and cifar10-cpu, for the record

    python benchmarks/recipe.py --data-dir ~/data/cifar10-jpeg --out bench-recipe [--seed 0]
    python benchmarks/recipe.py --data-dir ~/data/cifar10-jpeg --out bench-g --only a,g \
        --csv reports/benchmarks/recipe-at-a.csv  # the pruning cost at equal wall clock, on one machine
    python benchmarks/recipe.py --data-dir prunegreedy/data/sample_data/cifar10-sample --out /tmp/r \
        --epoch-scale 0.05 --set data.train_limit=200 --set data.test_limit=100 --csv /tmp/r/recipe.csv  # smoke

Every end-to-end run is given the wall clock of its greedy run ((a) for (b), (c); (d) for (e)): its
epochs are what fits in those seconds, from a quarter-epoch probe of the wide network (the small one
is probed too) whose setup and evaluation seconds are taken off. (g) is (d) with every stage's epochs
scaled so that its training (stages.csv) fits in (a)'s seconds less (d)'s other seconds. One run after
another: compare times only from an idle machine. Each finished run appends a row to the CSV (default
reports/benchmarks/recipe.csv); runs already there for this seed are skipped, and finished run
folders in OUT are reused, so a later session can finish an interrupted benchmark. Prints a table
and writes an accuracy-against-wall-clock plot next to the CSV (recipe.png).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from runs import PrintUI, run_once
from torch import nn

import prunegreedy
from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.data.base import Normalize
from prunegreedy.measure.size import count_macs, count_params
from prunegreedy.train import runtime
from prunegreedy.train.evaluate import evaluate
from prunegreedy.train.loop import Chain, train
from prunegreedy.train.modes import autocast_dtype
from prunegreedy.train.tta import evaluate_tta

FAST, FAST_COMPRESS = "cifar10-fast", "cifar10-fast-compress"
WIDE = "fastcifar-64-256-256"
PROBE_EPOCHS = 0.25
# fine-tuning after a cut after training, per 1024 examples like the recipe's lr (11.5): a fifth of it,
# decaying linearly (not measured)
FINETUNE = {"finetune_lr": 2.3, "finetune_schedule": "linear"}
COLUMNS = ["run", "item", "seed", "recipe", "model", "trainer", "final_acc", "final_acc_tta", "params",
           "params_with_head", "macs", "seconds", "budget_seconds", "epochs"]


def scaled_epochs(recipe: str, scale: float):
    """The recipe's epochs (per stage or one value) times `scale`."""
    e = config.load(recipe).train.epochs
    return [round(v * scale, 4) for v in e] if isinstance(e, list) else round(e * scale, 4)


def total(epochs) -> float:
    return sum(epochs) if isinstance(epochs, list) else epochs


class Bench:
    def __init__(self, args, ds, ui):
        self.args, self.ds, self.ui = args, ds, ui
        self.base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)},
                                  "run": {"quiet": True, "seed": args.seed}}, config.parse_set(args.set))
        self.csv = args.csv
        done = pd.read_csv(self.csv) if self.csv.exists() else pd.DataFrame(columns=COLUMNS)
        self.rows = {r["run"]: r for r in done[done.seed == args.seed].to_dict("records")}

    def record(self, name: str, item: str, recipe: str, model: str, meta: dict, budget: float | None,
               epochs) -> dict:
        row = {"run": name, "item": item, "seed": self.args.seed, "recipe": recipe, "model": model,
               "trainer": meta.get("trainer"), "final_acc": meta["final_acc"],
               "final_acc_tta": meta.get("final_acc_tta"), "params": meta["params"],
               "params_with_head": meta.get("params_with_head", meta["params"]), "macs": meta["macs"],
               "seconds": meta["seconds"], "budget_seconds": budget, "epochs": json.dumps(epochs)}
        self.csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row], columns=COLUMNS).to_csv(self.csv, mode="a", header=not self.csv.exists(), index=False)
        self.rows[name] = row
        return row

    def run(self, name: str, item: str, recipe: str, over: dict, budget: float | None = None) -> dict:
        """Train recipe + base + over (unless this seed's row is in the CSV already) and record it."""
        if name in self.rows:
            self.ui.log(f"{name}: in {self.csv} already, skipped")
            return self.rows[name]
        over = config.merge({"train": {}}, over)
        meta = run_once(name, recipe, over, self.base, self.args.out, self.ds, self.ui)
        cfg = config.load(recipe, config.merge(self.base, over))
        epochs = cfg.train.total_epochs if cfg.train.trainer == "end-to-end" else cfg.train.epochs
        return self.record(name, item, recipe, cfg.model.arch or cfg.model.plan, meta, budget, epochs)

    def probe(self, model: str) -> tuple[float, float]:
        """(training seconds an epoch, the run's other seconds) of `model` end to end with the fast recipe."""
        name = f"probe-{model}"
        meta = run_once(name, FAST, {"model": {"arch": model}, "train": {"trainer": "end-to-end",
                                                                         "total_epochs": PROBE_EPOCHS}},
                        self.base, self.args.out, self.ds, self.ui)
        trained = self.trained_seconds(name)
        return trained / PROBE_EPOCHS, meta["seconds"] - trained

    def trained_seconds(self, run: str) -> float:
        """The seconds finished `run` spent training, over its stages (stages.csv)."""
        return float(pd.read_csv(self.args.out / run / "stages.csv")["seconds"].sum())

    def epochs_within(self, run: str, recipe: str, budget: float) -> list[float]:
        """The recipe's per-stage epochs scaled so that finished `run`'s training (stages.csv) fits in
        `budget` seconds, its other seconds (setup, evaluation) kept."""
        trained = self.trained_seconds(run)
        scale = (budget - (self.rows[run]["seconds"] - trained)) / trained
        return [round(e * scale, 3) for e in scaled_epochs(recipe, self.args.epoch_scale)]

    def e2e_epochs(self, model: str, budget: float, share: float = 1.0) -> float:
        epoch_s, overhead_s = self.probe(model)
        return max(0.01, round(share * (budget - overhead_s) / epoch_s, 3))


def tp_run(b: Bench, name: str, budget: float, target_macs: int) -> dict:
    """End to end for 0.8 of `budget`, Torch-Pruning's global group-L1 cut to `target_macs`, fine-tuning
    for the rest (the fast recipe's optimizer); recorded from OUT/name/result.json."""
    from models import tp_global

    if name in b.rows:
        return b.rows[name]
    path = b.args.out / name
    result_file = path / "result.json"
    if not result_file.exists():
        epochs = b.e2e_epochs(WIDE, budget, 0.8)
        trained = run_once("trained", FAST, {"train": {"trainer": "end-to-end", "total_epochs": epochs}}, b.base,
                           path, b.ds, b.ui)
        model = prunegreedy.load_network(path / "trained")
        pruned = tp_global(model, target_macs, b.ds.image_shape).train().requires_grad_(True)
        cfg = config.load(FAST, config.merge(b.base, {"compress": FINETUNE}))
        dev = torch.device("cpu")
        amp = autocast_dtype(cfg.train.amp, dev)
        norm = Normalize(b.ds.mean, b.ds.std, dev, cfg.train.channels_last)
        pruned = pruned.to(memory_format=torch.channels_last)
        ft = b.e2e_epochs(WIDE, budget, 0.2)
        stats = train(Chain([(pruned, nn.Identity())]), b.ds, norm, cfg.train, ft, cfg.compress.finetune_lr,
                      cfg.compress.finetune_schedule, dev, torch.Generator().manual_seed(b.args.seed)).stats[0]
        acc, _ = evaluate(nn.Sequential(), pruned, nn.Identity(), b.ds, norm, 500, dev, amp)
        tta = evaluate_tta(nn.Sequential(), pruned, nn.Identity(), b.ds, norm, 500, dev, amp, cfg.train.tta)
        params = count_params(pruned)
        result = {"trainer": "end-to-end+tp", "final_acc": round(acc, 4), "final_acc_tta": round(tta, 4),
                  "params": params, "params_with_head": params, "macs": count_macs(pruned, b.ds.image_shape),
                  "seconds": round(trained["seconds"] + stats.seconds, 1), "epochs": [epochs, ft]}
        result_file.write_text(json.dumps(result, indent=2) + "\n")
    result = json.loads(result_file.read_text())
    return b.record(name, "c", FAST, WIDE, result, budget, result["epochs"])


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against wall clock of every recorded run, one colour per run and one marker per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    runs = list(dict.fromkeys(r["run"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    labelled = set()
    for r in rows:
        x, y = r["seconds"] / 60, r["final_acc"]
        ax.scatter(x, y, color=f"C{runs.index(r['run']) % 10}", marker="os^D"[seeds.index(int(r["seed"])) % 4],
                   label=None if r["run"] in labelled else f"({r['item']}) {r['run']}")
        labelled.add(r["run"])
        ax.annotate(f"{r['run']} s{int(r['seed'])}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training wall clock (min)")
    ax.set_ylabel("test accuracy, no TTA (%)")
    ax.set_title(f"CIFAR-10: greedy + pruning against the alternatives (seeds {', '.join(map(str, seeds))})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="run folders")
    ap.add_argument("--csv", type=Path, default=Path("reports/benchmarks/recipe.csv"))
    ap.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    ap.add_argument("--epoch-scale", type=float, default=1.0, help="every recipe's epochs times this (smoke tests)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    ap.add_argument("--only", default="a,b,c,d,e,g,f", help="the items to run, comma separated (a and d run "
                    "where b, c, e or g need them and they are not recorded yet)")
    args = ap.parse_args()
    want = set(args.only.split(",")).__contains__
    runtime.setup(torch.device("cpu"), None)
    ui = PrintUI()
    probe_cfg = config.load(FAST, config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)}},
                                               config.parse_set(args.set)))
    ds = data_registry.load_dataset(probe_cfg.data)
    args.out = args.out / f"seed{args.seed}"  # a run folder is reused only for its own seed
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args, ds, ui)
    ep = lambda recipe: {"train": {"epochs": scaled_epochs(recipe, args.epoch_scale)}}  # noqa: E731

    if want("a") or want("b") or want("c") or want("g"):
        a = b.run("greedy-r0.5", "a", FAST_COMPRESS, ep(FAST_COMPRESS))
        budget = a["seconds"]
    if want("b") and "small-e2e" not in b.rows:  # (probes run only for runs still to do)
        small = "fastcifar-" + "-".join(str(w) for w in _widths(args.out / "greedy-r0.5"))
        b.run("small-e2e", "b", FAST, {"model": {"arch": small},
                                       "train": {"trainer": "end-to-end", "total_epochs": b.e2e_epochs(small, budget)}},
              budget)
    if want("c") and "pat" not in b.rows:
        b.run("pat", "c", FAST, {"train": {"trainer": "end-to-end", "total_epochs": b.e2e_epochs(WIDE, budget, 0.8)},
                                 "compress": {"hook": "prune", "ratio": 0.5, "at": 1.0, "scope": "all",
                                              "finetune_epochs": b.e2e_epochs(WIDE, budget, 0.2), **FINETUNE}},
              budget)
    if want("c"):
        tp_run(b, "tp", budget, int(a["macs"]))
    if want("d") or want("e") or want("g"):
        d = b.run("greedy-r0", "d", FAST, ep(FAST))
    if want("g") and "greedy-r0-at-a" not in b.rows:
        b.run("greedy-r0-at-a", "g", FAST, {"train": {"epochs": b.epochs_within("greedy-r0", FAST, budget)}}, budget)
    if want("e") and "wide-e2e" not in b.rows:
        b.run("wide-e2e", "e", FAST, {"train": {"trainer": "end-to-end",
                                                "total_epochs": b.e2e_epochs(WIDE, d["seconds"])}}, d["seconds"])
    if want("f"):
        b.run("cpu-compress", "f", "cifar10-cpu-compress", ep("cifar10-cpu-compress"))
        b.run("cpu", "f", "cifar10-cpu", ep("cifar10-cpu"))

    rows = [b.rows[k] for k in ("greedy-r0.5", "small-e2e", "pat", "tp", "greedy-r0", "wide-e2e", "greedy-r0-at-a",
                                "cpu-compress", "cpu") if k in b.rows]
    table = pd.DataFrame(rows)[["item", "run", "model", "trainer", "final_acc", "final_acc_tta", "params_with_head",
                                "macs", "seconds", "budget_seconds"]]
    print(table.to_string(index=False))
    plot(pd.read_csv(args.csv).to_dict("records"), args.csv.with_suffix(".png"))
    print(f"plot: {args.csv.with_suffix('.png')}", file=sys.stderr)


def _widths(run: Path) -> list[int]:
    """The group widths of a finished fast network's run (a stage may hold several groups)."""
    net = prunegreedy.load_network(run)
    return [getattr(net, f"group{i + 1}").conv2.out_channels for i in range(net.n_groups)]


if __name__ == "__main__":
    main()
