"""A trained network compressed by about half its MACs, three ways, from the same trained weights:

  (a) stagewise           --trainer compress: stage by stage, each stage cut, refit to the original's
                          outputs and fine-tuned alone against the original's features;
  (a-kd) stagewise-kd     (a) with half of the loss of every stage but the first the original's logits
                          through its frozen rest (compress.distill 0,0.5,0.5: the first stage's rest would
                          be the largest graph); which loss is the default is chosen here;
  (a-blocks)              (a) with one stage per residual block (--split layer1.0,...: each stage of the
                          model's split cut into its children), the same fine-tuning epochs in all, spread
                          over the blocks: a smaller largest stage, so less training memory;
  (a-mem) stagewise-balanced
                          (a) with --set model.balance=4: the split cut again at its blocks into the 4
                          stages whose largest keeps the fewest activations for training (measure.balance),
                          the same fine-tuning epochs in all;
  (a-lab) stagewise-balanced-labels
                          (a-mem) with the labels' cross-entropy beside the features on its last stage, whose
                          rest is only the classifier (compress.labels 0,0,0,0.3), and the repair epochs moved
                          to where a stage loses most (compress.finetune_epochs 0.25,0.25,0.75,2);
  (b) tp-global           Torch-Pruning's own recipe: one global group-L1 ranking over the whole trained
                          network, to the --budget item's MACs within 2 %, then end-to-end fine-tuning;
  (b8) tp-global-round8   (b) with every kept width a multiple of 8 (Torch-Pruning's round_to): widths like
                          11 or 15 train about 2x slower in bf16 on an avx512_bf16 CPU, so (b) gets fewer epochs;
  (c) cut-then-finetune   prune-after-training: every stage cut with no repair (--trainer compress,
                          compress.finetune_epochs 0, compress.reconstruct 0), then the whole network
                          fine-tuned on the labels (compress.finetune_all_epochs).

    python benchmarks/compress_trained.py --data-dir ~/data/cifar10-jpeg --out bench-compress [--model resnet56]
    python benchmarks/compress_trained.py --data-dir prunegreedy/data/sample_data/cifar10-sample --out /tmp/c \
        --epochs 0.2 --stage-epochs 0.1 --set data.train_limit=200 --set data.test_limit=100 \
        --set run.threads=1 --csv /tmp/c/c.csv  # smoke

The network is trained once end to end (OUT/trained, --epochs) and its weights saved as
OUT/trained.safetensors. Every method uses cifar10-cpu's optimiser and schedule: SGD with nesterov
momentum 0.9, weight decay 5e-4 (none on BN and biases), batch 128, linear decay; the trained network
trains at its train.lr 0.1 with warm-up. (a) repairs its stages at compress.repair_lr (the trainer's
default); (b) and (c) fine-tune on the labels once at each --finetune-lr (run folders and CSV rows
tp-global-lr0.05, ...; column lr), so that each baseline is compared at its best learning rate.
(b) and (c) fine-tune for the seconds the stage-wise item named by --budget (default (a)) spent
cutting, refitting and fine-tuning (its stages.csv), less (b)'s own cut, and cut to its MACs: their
epochs come from a quarter-epoch probe of the pruned network ((c) probes that item's network, whose
widths its cut repeats), so every method has about its wall clock.

Each method runs in its own process, one after another (compare times only from an idle machine),
which records its own peak resident memory (peak_rss_mib: VmHWM on Linux, counted from the start of
its program; ru_maxrss elsewhere) and, on CUDA, torch.cuda.max_memory_allocated (peak_cuda_mib).
A process that only loads the dataset and the trained network (base) gives what every process
holds before it trains (base_rss_mib, base_cuda_mib): training memory is peak minus base. The
parent decodes the dataset once first, so no process's peak holds the decoding. On a CPU the
resident peak is mostly what every process holds (data, library, evaluation, allocator caches),
so each row also gives saved_mib: the activations autograd keeps for one training step at the
recipe's batch (prunegreedy.measure.memory, exact): the whole network's for end-to-end training,
the largest stage's for (a), whose prefix runs without a graph (and, for (a-kd)'s later stages, the
frozen rest after the stage, which their logits' loss backpropagates through).
Each finished run appends a row to the CSV (default reports/benchmarks/compress-trained.csv); runs
already there for this seed are skipped, and finished run folders in OUT are reused (a run found
finished without its bench.json, the measures of its process, is recorded without memory).
--only runs a subset (the trained network and (a) run where the others need them). Prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from models import tp_global
from runs import PrintUI, finished, run_once
from safetensors.torch import save_file
from torch import nn

import prunegreedy
from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.data.base import Normalize
from prunegreedy.measure.balance import balanced_split, cut_points
from prunegreedy.measure.memory import saved_activation_bytes
from prunegreedy.measure.size import count_macs, count_params
from prunegreedy.nn.models import build_model, default_split
from prunegreedy.nn.split import split_stages
from prunegreedy.train import runtime
from prunegreedy.train.evaluate import evaluate
from prunegreedy.train.loop import Chain, train
from prunegreedy.train.modes import autocast_dtype

RECIPE = "cifar10-cpu"  # its optimiser and schedule; the epochs are set per run here
RUNS = {"trained": "trained", "a": "stagewise", "a-kd": "stagewise-kd", "a-blocks": "stagewise-blocks",
        "a-mem": "stagewise-balanced", "a-lab": "stagewise-balanced-labels", "b": "tp-global",
        "b8": "tp-global-round8", "c": "cut-then-finetune"}
TP_ROUND = {"b": None, "b8": 8}  # Torch-Pruning's cuts: round_to of each
SWEPT = ("b", "b8", "c")  # fine-tuned end to end on the labels: one run per --finetune-lr, the best compared
BUDGET = "budget"  # in NEEDS: the stage-wise item whose seconds and MACs (b) and (c) are given (--budget)
NEEDS = {"trained": [], "base": ["trained"], "a": ["trained"], "a-kd": ["trained"], "a-blocks": ["trained"],
         "a-mem": ["trained"], "a-lab": ["trained"], "b": ["trained", BUDGET], "b8": ["trained", BUDGET],
         "c": ["trained", BUDGET]}
# (a-mem)'s model.balance: on resnet20, 3 balanced stages keep 65.5 MiB at the largest, not under half of
# (b)'s 129.7 MiB from the 20-epoch original; 4 keep 48.0 MiB
BALANCED = 4


class Stagewise(NamedTuple):
    """A stage-wise run: its stages, and what each stage's repair adds to the features' error."""
    stages: str  # the model's split ("stages"), one per block ("blocks"), or BALANCED stages cut again at its blocks
    distill: float = 0.0  # compress.distill of every stage but the first (whose rest would be the largest graph)
    labels: float = 0.0  # compress.labels of the last stage (whose rest is only the classifier)
    # compress.finetune_epochs per stage, times --stage-epochs; None: --stage-epochs spread evenly over the stages,
    # the same total as (a)'s
    epochs: list[float] | None = None


STAGEWISE = {"a": Stagewise("stages"), "a-kd": Stagewise("stages", distill=0.5), "a-blocks": Stagewise("blocks"),
             "a-mem": Stagewise("balanced"),
             "a-lab": Stagewise("balanced", labels=0.3, epochs=[0.25, 0.25, 0.75, 2.0])}
BENCH = "bench.json"  # in each run folder: what its process measured beyond run.json
PROBE_EPOCHS = 0.25
COLUMNS = ["run", "item", "seed", "model", "trainer", "final_acc", "params", "macs", "seconds", "budget_seconds",
           "epochs", "peak_rss_mib", "base_rss_mib", "peak_cuda_mib", "base_cuda_mib", "saved_mib", "lr"]
MAXRSS_UNIT = 2 ** 20 if sys.platform == "darwin" else 2 ** 10  # ru_maxrss: bytes on macOS, KiB on Linux


def peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux, VmHWM: ru_maxrss there also counts what the
    parent held when it forked this process (the decoded dataset), whatever this one uses."""
    status = Path("/proc/self/status")
    if status.exists():
        kib = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return round(int(kib) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT / 2 ** 20, 1)


def run_name(item: str, lr: float | None = None) -> str:
    """The item's run folder and CSV name: (b) and (c) once per fine-tuning learning rate."""
    return f"{RUNS[item]}-lr{lr:g}" if item in SWEPT else RUNS[item]


def folder_of(out: Path, item: str, lr: float | None = None) -> Path:
    return out / ("base" if item == "base" else run_name(item, lr))


def stage_split(model: str, kind: str) -> list[str]:
    """The model's registered split, (blocks) each of its stages cut at every child module, or
    (balanced) the split model.balance chooses, BALANCED stages (measure.balance)."""
    split = default_split(model)
    if kind == "stages":
        return split
    net = build_model(model, 10, 32)
    if kind == "balanced":
        return balanced_split(net, split, BALANCED, (3, 32, 32))
    return cut_points(net, split)


def distills(model: str, item: str) -> float | list[float]:
    """compress.distill of a stage-wise run: none on the first stage."""
    w = STAGEWISE[item]
    return 0.0 if w.distill == 0 else [0.0] + [w.distill] * (len(stage_split(model, w.stages)) - 1)


def labels(model: str, item: str) -> float | list[float]:
    """compress.labels of a stage-wise run: on the last stage only."""
    w = STAGEWISE[item]
    return 0.0 if w.labels == 0 else [0.0] * (len(stage_split(model, w.stages)) - 1) + [w.labels]


def through_rest(model: str, item: str) -> list[bool]:
    """Per stage of a stage-wise run: whether its repair's loss reads the logits, through the frozen rest."""
    w = STAGEWISE[item]
    n = len(stage_split(model, w.stages))
    return [(j > 0 and w.distill > 0) or (j == n - 1 and w.labels > 0) for j in range(n)]


def base_config(args) -> dict:
    # the recipe's own width options are for its plan, not for a named model
    model = {"arch": args.model, "width_mult": 1.0, "widths": None}
    return config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)}, "model": model,
                         "train": {"epochs": 1.0},  # per stage: unused here, the recipe's list is for its plan
                         "run": {"quiet": True, "seed": args.seed}}, config.parse_set(args.set))


def budget(args) -> tuple[float, int]:
    """(the seconds the --budget item spent in its phases: cuts, refits, fine-tuning; its MACs)."""
    path = args.out / RUNS[args.budget]
    if finished(path) is None:
        raise SystemExit(f"(b) and (c) need ({args.budget})'s finished run folder {path} (its seconds and its "
                         f"network)")
    seconds = float(pd.read_csv(path / "stages.csv")["seconds"].sum())
    return round(seconds, 2), int(finished(path)["macs"])


# ---------------------------------------------------------------------------------------------
# one item in this process (--child)

def child(args) -> None:
    base = base_config(args)
    cfg = config.load(RECIPE, base)
    device = runtime.resolve_device(cfg.run.device)
    runtime.setup(device, cfg.run.threads)
    ui = PrintUI()
    ds = data_registry.load_dataset(cfg.data)
    item, out = args.only, args.out
    trained = {"model": {"weights": str(out / "trained.safetensors")}, "train": {"trainer": "compress"},
               "compress": {"at": 1.0, "cuts": 1, "rewind": False, "hook": "prune", "ratio": 0.5}}
    bench: dict = {"device": str(device)}
    if item == "trained":
        fresh = finished(out / "trained") is None  # else only its weights file was missing: nothing trains here
        run_once("trained", RECIPE, {"train": {"trainer": "end-to-end", "total_epochs": args.epochs}}, base, out, ds,
                 ui)
        state = prunegreedy.load_network(out / "trained").state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "trained.safetensors"))
        if not fresh:
            return
        bench["epochs"] = args.epochs
    elif item == "base":  # what every process holds before it trains: the data where it trains, the network
        _network, _data = prunegreedy.load_network(out / "trained").to(device), ds.to(device)
        (out / "base").mkdir(exist_ok=True)
    elif item in STAGEWISE:
        w = STAGEWISE[item]
        split = stage_split(args.model, w.stages)
        epochs = (round(args.stage_epochs * len(stage_split(args.model, "stages")) / len(split), 4)  # the same in all
                  if w.epochs is None else [round(args.stage_epochs * e, 4) for e in w.epochs])
        cut = {"balance": BALANCED} if w.stages == "balanced" else {"split": split}  # as a user asks
        over = {"model": cut, "compress": {"finetune_epochs": epochs, "distill": distills(args.model, item),
                                           "labels": labels(args.model, item)}}
        run_once(RUNS[item], RECIPE, config.merge(trained, over), base, out, ds, ui)
        bench["epochs"] = epochs
    elif item in TP_ROUND:
        bench.update(tp_recipe(args, cfg, ds.to(device), device, args.finetune_lr, item))
    elif item == "c":
        seconds, _ = budget(args)
        ds = ds.to(device)  # where the run trains (its own move is then a no-op)
        model = prunegreedy.load_network(out / RUNS[args.budget])
        epoch_s = epoch_seconds(model, ds, cfg, device, args.finetune_lr)
        del model
        epochs = max(0.01, round(seconds / epoch_s, 3))
        ui.log(f"(c): {epochs} epochs of fine-tuning for ({args.budget})'s {seconds} s ({epoch_s:.1f} s an epoch)")
        run_once(run_name("c", args.finetune_lr), RECIPE, config.merge(trained, {"compress": {
            "finetune_epochs": 0, "reconstruct": 0, "finetune_all_epochs": epochs, "finetune_lr": args.finetune_lr}}),
            base, out, ds, ui)
        bench.update(budget_seconds=seconds, epochs=epochs)
    bench["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        bench["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    folder = folder_of(out, item, args.finetune_lr)
    (folder / BENCH).write_text(json.dumps(bench, indent=2) + "\n")


def saved_mib(model: nn.Module, shape: tuple[int, int, int], batch: int, split: list[str] | None = None,
              rest: list[bool] | None = None) -> float:
    """MiB of activations autograd keeps for one training step of `model` at `batch`: end to end, or
    given the `split` of a stage-wise run its largest stage's (the stages before it without a graph;
    on a stage whose `rest` is true, the stages after it and the classifier frozen but in the graph)."""
    model = model.train().requires_grad_(True)
    if split is None:
        return round(saved_activation_bytes(lambda: model(torch.randn(batch, *shape)),
                                            list(model.state_dict().values()))[0] / 2 ** 20, 1)
    stages, tail = split_stages(model, split)
    x = torch.randn(batch, *shape)
    params = list(model.state_dict().values())

    def step(j: int):
        def forward():
            with torch.no_grad():
                h = nn.Sequential(*stages[:j])(x)
            h = stages[j](h)
            return nn.Sequential(*stages[j + 1:], *[tail] * (tail is not None))(h) if rest and rest[j] else h
        return forward

    return round(max(saved_activation_bytes(step(j), params)[0] for j in range(len(stages))) / 2 ** 20, 1)


def memory_format(cfg) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def epoch_seconds(model: nn.Module, ds, cfg, device: torch.device, lr: float) -> float:
    """Seconds an epoch of `model`'s end-to-end fine-tuning takes here, from a short run on a copy."""
    trial = copy.deepcopy(model).train().requires_grad_(True)
    trial = trial.to(device, memory_format=memory_format(cfg))
    norm = Normalize(ds.mean, ds.std, device, cfg.train.channels_last)
    stats = train(Chain([(trial, nn.Identity())]), ds, norm, cfg.train, PROBE_EPOCHS, lr,
                  cfg.compress.finetune_schedule, device, torch.Generator().manual_seed(cfg.run.seed)).stats[0]
    return stats.seconds / PROBE_EPOCHS


def tp_recipe(args, cfg, ds, device: torch.device, lr: float, item: str) -> dict:
    """Torch-Pruning's global group-L1 cut of the trained network to the --budget item's MACs, then
    end-to-end fine-tuning at `lr` for its phase seconds less the cut's; recorded as result.json."""
    path = folder_of(args.out, item, lr)
    path.mkdir(parents=True, exist_ok=True)
    seconds, target_macs = budget(args)
    t0 = time.perf_counter()
    pruned = tp_global(prunegreedy.load_network(args.out / "trained"), target_macs, ds.image_shape, TP_ROUND[item])
    cut_s = time.perf_counter() - t0
    pruned = pruned.train().requires_grad_(True)
    pruned = pruned.to(device, memory_format=memory_format(cfg))
    epoch_s = epoch_seconds(pruned, ds, cfg, device, lr)
    epochs = max(0.01, round((seconds - cut_s) / epoch_s, 3))
    PrintUI().log(f"({item}): cut in {cut_s:.1f} s, {epochs} epochs of fine-tuning for the rest of ({args.budget})'s "
                  f"{seconds} s ({epoch_s:.1f} s an epoch)")
    amp = autocast_dtype(cfg.train.amp, device)
    norm = Normalize(ds.mean, ds.std, device, cfg.train.channels_last)
    t1 = time.perf_counter()
    train(Chain([(pruned, nn.Identity())]), ds, norm, cfg.train, epochs, lr,
          cfg.compress.finetune_schedule, device, torch.Generator().manual_seed(args.seed))
    acc, _ = evaluate(nn.Sequential(), pruned, nn.Identity(), ds, norm, cfg.train.eval_batch_size, device, amp)
    result = {"trainer": "torch-pruning", "final_acc": round(acc, 4), "params": count_params(pruned),
              "macs": count_macs(pruned.cpu(), ds.image_shape), "seconds": round(cut_s + time.perf_counter() - t1, 2)}
    (path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return {"budget_seconds": seconds, "epochs": epochs}


# ---------------------------------------------------------------------------------------------
# the parent: each item in a process of its own, a CSV row per finished run

class Bench:
    def __init__(self, args):
        self.args, self.ui, self.warm = args, PrintUI(), False
        done = pd.read_csv(args.csv) if args.csv.exists() else pd.DataFrame(columns=COLUMNS)
        self.rows = {r["run"]: r for r in done[done.seed == args.seed].to_dict("records")}

    def result(self, item: str, lr: float | None = None) -> dict | None:
        """The item's results in OUT (run.json or result.json, with its bench.json), or None: not run."""
        folder = folder_of(self.args.out, item, lr)
        bench = json.loads((folder / BENCH).read_text()) if (folder / BENCH).exists() else {}
        if item == "base":
            return bench or None
        if item in TP_ROUND:
            meta = json.loads((folder / "result.json").read_text()) if (folder / "result.json").exists() else None
        else:
            meta = finished(folder)
        if item == "trained" and not (self.args.out / "trained.safetensors").exists():
            meta = None
        return None if meta is None else {**meta, **bench}

    def needs(self, item: str) -> list[str]:
        """The items `item` needs, --budget's in place of BUDGET."""
        return [self.args.budget if dep == BUDGET else dep for dep in NEEDS[item]]

    def ensure(self, item: str, lr: float | None = None) -> dict:
        """The item's results, from its own process where OUT does not hold them yet."""
        res = self.result(item, lr)
        if res is None:
            for dep in self.needs(item):
                self.ensure(dep)
            self.spawn(item, lr)
            res = self.result(item, lr)
        return res

    def spawn(self, item: str, lr: float | None) -> None:
        a = self.args
        if not self.warm:  # decoded and cached once here, so no child's peak holds the decoding
            data_registry.load_dataset(config.load(RECIPE, base_config(a)).data)
            self.warm = True
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--only", item, "--data-dir", str(a.data_dir),
               "--out", str(a.out), "--model", a.model, "--epochs", str(a.epochs), "--stage-epochs",
               str(a.stage_epochs), "--seed", str(a.seed), "--budget", a.budget,
               *[x for s in a.set for x in ("--set", s)], *(["--finetune-lr", str(lr)] if lr is not None else [])]
        path = folder_of(a.out, item, lr) / BENCH
        stamp = path.stat().st_mtime_ns if path.exists() else None
        self.ui.log(f"({item}): its own process")
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"({item}) failed")
        if path.exists() and path.stat().st_mtime_ns != stamp:  # else it trained nothing: no peak to show
            self.ui.log(f"({item}): peak resident memory {json.loads(path.read_text())['peak_rss_mib']} MiB")

    def record(self, item: str, lr: float | None = None, quiet: bool = False) -> dict:
        """The item's CSV row (and those of the runs it needs), its run made unless recorded already."""
        name = run_name(item, lr)
        if name in self.rows:
            if not quiet:
                self.ui.log(f"{name}: in {self.args.csv} already, skipped")
            return self.rows[name]
        for dep in self.needs(item):
            if dep in RUNS:
                self.record(dep, quiet=True)
        res, base = self.ensure(item, lr), self.ensure("base")
        if "peak_rss_mib" not in res:
            self.ui.log(f"{name}: finished in {self.args.out} without its process's measures; recorded without memory "
                        f"and epochs")
        row = {"run": name, "item": item, "seed": self.args.seed, "model": self.args.model,
               "trainer": res.get("trainer"), "final_acc": res["final_acc"], "params": res["params"],
               "macs": res["macs"], "seconds": res["seconds"], "budget_seconds": res.get("budget_seconds"),
               "epochs": res.get("epochs"), "peak_rss_mib": res.get("peak_rss_mib"),
               "base_rss_mib": base.get("peak_rss_mib"), "peak_cuda_mib": res.get("peak_cuda_mib"),
               "base_cuda_mib": base.get("peak_cuda_mib")}
        row["saved_mib"] = self.saved(item, lr)
        row["lr"] = lr if lr is not None else self.lr(item)
        csv = self.args.csv
        csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row], columns=COLUMNS).to_csv(csv, mode="a", header=not csv.exists(), index=False)
        self.rows[name] = row
        return row

    def lr(self, item: str) -> float:
        """The learning rate the item trained at: the network's own, or its stages' repair."""
        cfg = config.load(RECIPE, base_config(self.args))
        return cfg.train.lr if item == "trained" else cfg.compress.repair_lr

    def saved(self, item: str, lr: float | None) -> float:
        """The item's saved_mib, from its network in OUT ((b)'s cut made again: it keeps no network)."""
        a, cfg = self.args, config.load(RECIPE, base_config(self.args))
        shape = (3, cfg.data.image_size, cfg.data.image_size)
        if item in TP_ROUND:
            model = tp_global(prunegreedy.load_network(a.out / "trained"), budget(a)[1], shape, TP_ROUND[item])
        else:
            model = prunegreedy.load_network(folder_of(a.out, item, lr))
        if item not in STAGEWISE:
            return saved_mib(model, shape, cfg.train.batch_size)
        return saved_mib(model, shape, cfg.train.batch_size, stage_split(a.model, STAGEWISE[item].stages),
                         through_rest(a.model, item))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="run folders")
    ap.add_argument("--csv", type=Path, default=Path("reports/benchmarks/compress-trained.csv"))
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=float, default=8.0, help="end-to-end epochs of the trained network")
    ap.add_argument("--stage-epochs", type=float, default=1.0, help="(a): fine-tuning epochs of each stage")
    ap.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    ap.add_argument("--finetune-lr", default="0.01,0.05,0.2", help="(b), (b8), (c): the learning rates of their "
                    "end-to-end fine-tuning, one run each, comma separated (the best is theirs)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    ap.add_argument("--only", default="trained,a,a-kd,a-blocks,a-mem,a-lab,b,b8,c", help="the items to run, "
                    "comma separated, of trained, base, a, a-kd, a-blocks, a-mem, a-lab, b, b8, c (the trained network "
                    "and a run where the others need them and they are not recorded yet; base, measured once in OUT, "
                    "where any row needs it)")
    ap.add_argument("--budget", default="a", choices=list(STAGEWISE), help="the stage-wise item whose phase seconds "
                    "and MACs (b) and (c) are given")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # run the one --only item here
    args = ap.parse_args()
    args.out = args.out.resolve()
    items, lrs = args.only.split(","), [float(x) for x in args.finetune_lr.split(",")]
    args.finetune_lr = lrs[0] if args.child else None
    unknown = [i for i in items if i not in NEEDS]
    if unknown or (args.child and len(items) != 1):
        ap.error(f"--only takes items of {', '.join(NEEDS)} (one with --child), got {args.only}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)
    b = Bench(args)
    for item in NEEDS:
        if item in items:
            for lr in lrs if item in SWEPT else [None]:
                b.ensure("base") if item == "base" else b.record(item, lr)
    rows = pd.DataFrame(list(b.rows.values()), columns=COLUMNS)
    rows["train_rss_mib"] = rows.peak_rss_mib - rows.base_rss_mib
    print(rows[["item", "run", "trainer", "lr", "final_acc", "params", "macs", "seconds", "budget_seconds", "epochs",
                "peak_rss_mib", "base_rss_mib", "train_rss_mib", "saved_mib"]].to_string(index=False))


if __name__ == "__main__":
    main()
