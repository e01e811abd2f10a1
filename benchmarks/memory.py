"""Activation memory of each greedy stage against end-to-end training, and one step's peak RSS.

For a plan (default: the paper's k=2 CIFAR-10 net, full width), batch B of random 32x32 images, fp32:
  saved     bytes per training sample that autograd keeps for backward (prunegreedy.memory): for
            stage j, block j + head j on blocks 1..j-1 frozen under no_grad; for end-to-end, all
            blocks trained jointly under the plan's last head. Input, targets and BN batch
            statistics included; parameters, buffers, gradients and optimizer state are not.
  rss       resident memory of a fresh process for the same configuration: after it built the
            modules, batch and optimizer (`build`), and its peak during one training step (forward,
            backward, SGD step). The difference is the step's own peak on top of what was built:
            saved activations plus transient buffers, gradients, momentum and the CPU backend's
            workspaces, page-granular and coarse. Linux only: the peak is VmHWM, reset after the
            build through /proc/self/clear_refs; ru_maxrss cannot serve, since a child inherits
            its parent's peak across fork and exec and torch's import peak would hide the step.
  decoupled the same for one decoupled step (every block at once, each stepped before the next runs):
            its saved bytes peak at the largest block + head, its RSS is measured like the others.
Prints a CSV and summary lines against the targets: each greedy stage <= 35% of end-to-end; a
decoupled step's peak <= 1.2x the largest greedy stage's.

    python benchmarks/memory.py [--plan cifar10-k2] [--width-mult 1] [--head pooled] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import bare_step_fn, end_to_end_modules, plan_modules, stage_modules
from torch import nn

from prunegreedy.nn import plans as models_plans
from prunegreedy.nn import spec as models_spec
from prunegreedy.train import runtime
from prunegreedy.config import TrainConfig
from prunegreedy.measure.memory import saved_activation_bytes
from prunegreedy.train.loop import make_optimizer

E2E = "end-to-end"
DGL = "decoupled"  # every block at once, each stepped before the next runs (prunegreedy.train.decoupled)
TARGET = 0.35
CFG = TrainConfig(amp="off")  # SGD with momentum and weight decay, as in training


def modules(plan: list[models_spec.StageSpec], name: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(frozen prefix, trained blocks, head) of greedy stage `name` ("1".."J") or of end-to-end training."""
    if name != E2E:
        return stage_modules(plan, [s.width for s in plan], int(name) - 1)
    return end_to_end_modules(plan)


def status_mib(field: str) -> float:
    kib = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1)
    return int(kib) / 1024


def decoupled_step_fn(plan: list[models_spec.StageSpec], batch: int):
    """One decoupled training step on random tensors: block j learns on block j-1's detached output."""
    blocks, heads = plan_modules(plan)
    blocks = [b.to(memory_format=torch.channels_last) for b in blocks]
    heads = [h.to(memory_format=torch.channels_last) for h in heads]
    opts = [make_optimizer([b, h], 0.01, CFG) for b, h in zip(blocks, heads)]
    x0 = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        x = x0
        for block, head, opt in zip(blocks, heads, opts):
            feats = block(x)
            loss = F.cross_entropy(head(feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            x = feats.detach()
    return step


def child(plan: list[models_spec.StageSpec], name: str, batch: int) -> None:
    step = decoupled_step_fn(plan, batch) if name == DGL else bare_step_fn(*modules(plan, name), batch, CFG)
    build = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak (VmHWM) := current RSS
    step()
    print(json.dumps({"build": build, "peak": status_mib("VmHWM")}))


def measure_saved(plan: list[models_spec.StageSpec], name: str, batch: int = 32) -> tuple[int, int]:
    prefix, body, head = modules(plan, name)
    params = [t for m in (prefix, body, head) for t in m.state_dict().values()]
    return saved_activation_bytes(bare_step_fn(prefix, body, head, batch, CFG), params)


def measure(args: argparse.Namespace, plan: list[models_spec.StageSpec], name: str) -> tuple[float, int, float, float]:
    """Saved bytes per sample and saved storages (here), RSS after build and step peak in MiB (fresh process)."""
    if name == DGL:
        # Each block's graph is freed by its backward before the next block runs, so the bytes held
        # at once peak at the largest block + head: greedy stage j's (its prefix saves nothing).
        saved, count = max(measure_saved(plan, str(j), args.batch) for j in range(1, len(plan) + 1))
    else:
        saved, count = measure_saved(plan, name, args.batch)
    cmd = [sys.executable, __file__, "--child", name, "--plan", args.plan, "--width-mult", str(args.width_mult),
           "--batch", str(args.batch)] + (["--threads", str(args.threads)] if args.threads else []) + \
        (["--head", args.head] if args.head else [])
    rss = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    return saved / args.batch, count, rss["build"], rss["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="cifar10-k2")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--head", default=None, help="head type replacing the plan's aux heads (model.head)")
    ap.add_argument("--child", metavar="1..J|end-to-end|decoupled", help="internal: one training step in this process")
    args = ap.parse_args()

    runtime.setup(torch.device("cpu"), args.threads)  # the allocator settings training runs with
    plan = models_plans.make_plan(args.plan, args.width_mult, head=args.head)
    if args.child:
        child(plan, args.child, args.batch)
        return
    names = [str(j) for j in range(1, len(plan) + 1)] + [E2E, DGL]
    rows = {name: measure(args, plan, name) for name in names}
    e2e_saved, _, e2e_build, e2e_peak = rows[E2E]
    print("config,saved_bytes_per_sample,saved_ratio,saved_storages,saved_mib_batch,rss_build_mib,rss_step_peak_mib,"
          "step_extra_mib,step_extra_ratio")
    for name, (saved, count, build, peak) in rows.items():
        print(f"{name},{saved:.0f},{saved / e2e_saved:.3f},{count},{saved * args.batch / 2**20:.1f},{build:.1f},"
              f"{peak:.1f},{peak - build:.1f},{(peak - build) / (e2e_peak - e2e_build):.3f}")
    names = names[:-1]  # the greedy stages and end-to-end; decoupled is compared below
    ratios = [rows[n][0] / e2e_saved for n in names[:-1]]
    over = [n for n, r in zip(names, ratios) if r > TARGET]
    verdict = f"missed by stage {', '.join(over)}" if over else "met"
    extra = [(rows[n][3] - rows[n][2]) / (e2e_peak - e2e_build) for n in names[:-1]]
    print(f"summary: a greedy stage keeps max {max(ratios):.1%}, mean {sum(ratios) / len(ratios):.1%} of "
          f"end-to-end's saved activations per sample (target <= {TARGET:.0%}: {verdict}); one step's peak RSS "
          f"above the built model: max {max(extra):.1%}, mean {sum(extra) / len(extra):.1%} of end-to-end's "
          f"({args.plan}, width x{args.width_mult:g}, heads {args.head or 'of the plan'}, batch {args.batch}, fp32, "
          f"{torch.get_num_threads()} threads)")
    dgl_extra = rows[DGL][3] - rows[DGL][2]
    stage_extra = max(rows[n][3] - rows[n][2] for n in names[:-1])
    print(f"summary: a decoupled step's peak RSS above the built model is {dgl_extra:.1f} MiB, {dgl_extra / stage_extra:.2f}x "
          f"the largest greedy stage's ({stage_extra:.1f} MiB; target <= 1.2x) and {dgl_extra / (e2e_peak - e2e_build):.2f}x "
          f"end-to-end's; its saved activations peak at {rows[DGL][0] / e2e_saved:.1%} of end-to-end's")

if __name__ == "__main__":
    main()
