"""What makes a cut inside the schedule cost less: one factor at a time against cifar10-cpu-compress.

    python benchmarks/cut_cost.py --data-dir ~/data/cifar10-jpeg --out bench-cut [--seeds 0,1]
    python benchmarks/cut_cost.py --data-dir ... --out bench-cut --final gradual3   # the report on test

Choice: every candidate trains on the training split less 5,000 held-out images (stratified,
seeded) and is scored on those held-out images; the test split is not looked at to choose.
Candidates, each the recipe (every block pruned by half at compress.at 0.5 by filter L1, no
fine-tuning) with one factor changed: when to cut (at 0.25, 0.75), the criterion (bn, taylor),
distillation from the pre-cut block + head (compress.distill 0.5), gradual cuts (3 cuts on the
cubic schedule, the last at 0.5), learning-rate rewinding after the cut (compress.rewind),
epochs moved to stage 3, where the cut costs most, at the recipe's wall clock (stage3-long,
stage3-longer), a least-squares refit of the layers after the cut (compress.reconstruct), and
other per-stage ratios at no more parameters and MACs than uniform half's (sens-alloc, last-wide),
the cut almost at once (at0.02), pruning after training with and without the refit (after,
after-reconstruct with half an epoch of fine-tuning, after1, after1-reconstruct with one), and
other weight decays (wd2e-4, wd1e-3). `--final NAME` then trains NAME, the recipe and the unpruned cifar10-cpu on the
whole training split and reports test accuracy. Runs already finished in OUT
are reused, so an interrupted benchmark continues. Times are those of the runs (compare them
only from an idle machine); distillation's extra cost per step is measured on its own at the end.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from runs import PrintUI, run_once

from prunegreedy import config
from prunegreedy.data import registry as data_registry
from prunegreedy.data.base import Normalize
from prunegreedy.deploy.network import load_network
from prunegreedy.train import runtime
from prunegreedy.train.evaluate import accuracy

RECIPE = "cifar10-cpu-compress"
HOLDOUT = 5000
CANDIDATES = {
    "base": {},
    "at0.25": {"compress": {"at": 0.25}},
    "at0.75": {"compress": {"at": 0.75}},
    "bn": {"compress": {"importance": "bn"}},
    "taylor": {"compress": {"importance": "taylor"}},
    "distill": {"compress": {"distill": 0.5}},
    "gradual3": {"compress": {"cuts": 3}},
    # learning-rate rewinding (Renda et al., 2020): the rest of the stage runs the schedule again
    "rewind": {"compress": {"rewind": True}},
    # stage 3 (the psi stage) is where the cut costs most: epochs moved there from elsewhere, at
    # the recipe's wall clock (its stage seconds an epoch: 4.9, 8.1, 11.4, 10.8)
    "stage3-long": {"train": {"epochs": [6, 4, 8, 2]}},
    "stage3-longer": {"train": {"epochs": [5, 3, 9, 2]}},
    # least-squares refit of the head's first layer to its outputs before the cut (He et al. 2017)
    "reconstruct": {"compress": {"reconstruct": 2048}},
    # where the parameters go, at no more than uniform half's parameters and MACs: the widths the
    # sensitivity rule chose for uniform half's MACs after training (reports/benchmarks/budget.*,
    # seeds 1 and 2: 45, 26, 51, 117), and stage 4 left whole with stage 3 cut harder (32, 32, 48, 128)
    "sens-alloc": {"compress": {"ratios": [0.3, 0.6, 0.6, 0.085938]}},
    "last-wide": {"compress": {"ratios": [0.5, 0.5, 0.625, 0.0]}},
    # the cut almost at once: close to training the pruned widths from scratch (with the same heads)
    "at0.02": {"compress": {"at": 0.02}},
    # pruning after training, without and with the refit: half an epoch of fine-tuning (the older
    # recipe) and one (compress.at 1's default)
    "after": {"compress": {"at": 1.0, "finetune_epochs": 0.5, "reconstruct": 0}},
    "after-reconstruct": {"compress": {"at": 1.0, "finetune_epochs": 0.5, "reconstruct": 2048}},
    "after1": {"compress": {"at": 1.0, "reconstruct": 0}},
    "after1-reconstruct": {"compress": {"at": 1.0, "reconstruct": 2048}},
    # the recipe's weight decay (5e-4) halved and doubled
    "wd2e-4": {"train": {"weight_decay": 2.0e-4}},
    "wd1e-3": {"train": {"weight_decay": 1.0e-3}},
}


@torch.no_grad()
def holdout_acc(run: Path, held, mean, std) -> float:
    net = load_network(run)
    norm = Normalize(mean, std, torch.device("cpu"), channels_last=False)
    logits = torch.cat([net(xb).float() for xb, _ in held.eval_batches(1000, norm)])
    return round(accuracy(logits, held.y), 2)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def distill_step_cost(ds, steps: int = 30) -> float:
    """Seconds per step of the recipe's stage 1 with the distillation teacher, over without it."""
    from prunegreedy.compress.inside import distill_loss, teacher_of
    from prunegreedy.nn.network import make_block, make_head
    from prunegreedy.nn.plans import make_plan
    from prunegreedy.train.loop import Chain, train

    cfg = config.load(RECIPE, {"compress": {"distill": 0.5}})
    m = cfg.model
    stage = make_plan(m.plan, m.width_mult, m.widths, m.head, m.head_pool, 32)[0]
    block = make_block(3, stage).to(memory_format=torch.channels_last)
    head = make_head(stage.width, stage, ds.num_classes, (32, 32)).to(memory_format=torch.channels_last)
    norm = Normalize(ds.mean, ds.std, torch.device("cpu"), cfg.train.channels_last)
    epochs = steps / -(-ds.num_train // cfg.train.batch_size)
    seconds = []
    for teach in (False, True):
        chain = Chain([(block, head)], loss=distill_loss(teacher_of(block, head), cfg.compress) if teach else None)
        train(chain, ds, norm, cfg.train, epochs / 3, 0.01, "constant", torch.device("cpu"), torch.Generator())
        seconds.append(train(chain, ds, norm, cfg.train, epochs, 0.01, "constant", torch.device("cpu"),
                             torch.Generator()).stats[0].seconds)
    return seconds[1] / seconds[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--holdout", type=int, default=HOLDOUT, help="training images held out to choose on")
    ap.add_argument("--only", default=",".join(CANDIDATES), help="candidates to run, comma separated")
    ap.add_argument("--final", help="the chosen candidate: train it, the recipe and unpruned cifar10-cpu on all "
                                    "training images and report test accuracy")
    ap.add_argument("--set", action="append", default=[], help="config override for every run (smoke tests)")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    ui = PrintUI()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = config.merge({"data": {"name": "cifar10", "data_dir": str(args.data_dir)}, "run": {"quiet": True}},
                        config.parse_set(args.set))
    ds = data_registry.load_dataset(config.load(RECIPE, base).data)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.final:
        plan = [(f"final-{args.final}", RECIPE, CANDIDATES[args.final]), ("final-base", RECIPE, {}),
                ("final-unpruned", "cifar10-cpu", {})]
        for s in seeds:
            for name, recipe, over in plan:
                m = run_once(f"{name}-seed{s}", recipe, config.merge(over, {"run": {"seed": s}}), base, args.out, ds, ui)
                print(f"{name} seed {s}: test {m['final_acc']:.2f} %  {m['params']:,} params  {m['macs']:,} MACs  "
                      f"{m['seconds'] / 60:.1f} min  amp {m['amp']}", flush=True)
        return
    results: dict[str, list[tuple[float, float, float]]] = {}
    for s in seeds:
        train, held = ds.split_holdout(args.holdout, s)
        for name in args.only.split(","):
            run = f"{name}-seed{s}"
            m = run_once(run, RECIPE, config.merge(CANDIDATES[name], {"run": {"seed": s}}), base, args.out, train, ui)
            h = holdout_acc(args.out / run, held, ds.mean, ds.std)
            results.setdefault(name, []).append((h, m["final_acc"], m["seconds"]))
            print(f"{run}: held-out {h:.2f} %  test {m['final_acc']:.2f} %  {m['seconds'] / 60:.1f} min", flush=True)
    print("candidate, seeds, mean held-out acc, vs base (points), mean run minutes")
    ref = mean([h for h, _, _ in results.get("base", [(float("nan"), 0, 0)])])
    for name, rs in results.items():
        h = mean([r[0] for r in rs])
        print(f"{name}, {len(rs)}, {h:.2f}, {h - ref:+.2f}, {mean([r[2] for r in rs]) / 60:.1f}")
    print(f"distillation: {distill_step_cost(ds):.2f}x the seconds per step of the recipe's stage 1 "
          f"(the teacher's forward pass), for the steps after the cut")


if __name__ == "__main__":
    main()
