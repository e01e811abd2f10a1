"""Training speed and peak accelerator memory of greedy stages vs end-to-end, on random tensors.

For a plan (default `vgg11` at 224x224, ImageNet-sized), each greedy stage j is timed as the
trainer runs it (frozen blocks 1..j-1 under no_grad, block j + head j trained, SGD step), and
end-to-end as every block trained jointly into the last stage's head. Inputs are random tensors
already on the device, so this is the compute side only; bf16 autocast and channels_last as
in training. Prints a CSV and a one-line summary.

    python benchmarks/synthetic_speed.py --plan vgg11 --batch 256 --stages 1,8   # on a GPU
    python benchmarks/synthetic_speed.py --width-mult 0.0625 --size 64 --batch 4 --steps 1   # smoke test
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import plan_modules
from prunegreedy.nn import plans as models_plans
from prunegreedy.nn import spec as models_spec
from prunegreedy.train import runtime
from prunegreedy.train import loop as train_loop
from prunegreedy.train import modes as train_modes
from prunegreedy.config import TrainConfig


def configs(plan: list[models_spec.StageSpec], stages: list[int], classes: int, size: int):
    """(name, frozen prefix, trained body, head) for each chosen greedy stage, then end-to-end.

    Every configuration gets freshly built modules: a block frozen as some stage's prefix must
    not stay frozen when end-to-end trains it.
    """
    for j in stages:
        blocks, heads = plan_modules(plan[:j], (3, size, size), classes)
        yield f"stage {j}", nn.Sequential(*blocks[: j - 1]), blocks[j - 1], heads[-1]
    blocks, heads = plan_modules(plan, (3, size, size), classes)
    yield "end-to-end", nn.Sequential(), nn.Sequential(*blocks), heads[-1]


def measure(prefix, body, head, x, y, steps: int, device, amp) -> tuple[float, float | None]:
    """Seconds per training step (after warm-up) and the peak accelerator memory in MiB."""
    prefix, body, head = (m.to(device, memory_format=torch.channels_last) for m in (prefix, body, head))
    train_modes.freeze(prefix)
    opt = train_loop.make_optimizer([body, head], 0.01, TrainConfig())
    assert all(p.requires_grad for p in list(body.parameters()) + list(head.parameters()))

    def step():
        with train_modes.autocast(device, amp):
            with torch.no_grad():
                f = prefix(x)
            loss = F.cross_entropy(head(body(f)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = device.type == "cuda"
    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    for m in (prefix, body, head):
        m.to("cpu")  # free the accelerator for the next configuration
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="vgg11")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--stages", default="all", help="comma list of greedy stages to time, or 'all'")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--csv", type=Path, help="also write the CSV here")
    args = ap.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.setup(device, None)
    amp = train_modes.autocast_dtype("auto", device)
    plan = models_plans.make_plan(args.plan, args.width_mult)
    stages = list(range(1, len(plan) + 1)) if args.stages == "all" else [int(s) for s in args.stages.split(",")]
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    lines = ["config,step_ms,images_per_s,peak_mem_mib"]
    print(lines[0])
    results = {}
    for name, prefix, body, head in configs(plan, stages, args.classes, args.size):
        try:
            seconds, peak = measure(prefix, body, head, x, y, args.steps, device, amp)
        except torch.OutOfMemoryError:
            lines.append(f"{name},,,out of memory")
            print(lines[-1], flush=True)
            continue
        results[name] = (args.batch / seconds, peak)
        lines.append(f"{name},{seconds * 1e3:.1f},{args.batch / seconds:.1f},{'' if peak is None else f'{peak:.0f}'}")
        print(lines[-1], flush=True)
        if args.csv:
            args.csv.write_text("\n".join(lines) + "\n")
    e2e = results.get("end-to-end")
    greedy = {k: v for k, v in results.items() if k != "end-to-end"}
    if e2e and greedy:
        mem = ""
        if e2e[1]:
            worst = max(greedy, key=lambda k: greedy[k][1])
            mem = f"; peak memory {worst} {greedy[worst][1]:,.0f} MiB vs end-to-end {e2e[1]:,.0f} MiB " \
                  f"({greedy[worst][1] / e2e[1]:.2f}x)"
        speeds = ", ".join(f"{k} {v[0]:,.0f}" for k, v in greedy.items())
        print(f"summary: {args.plan} x{args.width_mult:g} at {args.size}px, batch {args.batch}, {device}, "
              f"{str(amp).replace('torch.', '') if amp else 'fp32'}: images/s {speeds}; end-to-end {e2e[0]:,.0f}{mem}")


if __name__ == "__main__":
    main()
