"""Does a block's training step on the CPU slow down when its width is not a multiple of 8 or 16?

A budget or a per-stage ratio can leave widths like 45 or 26 (compress.round_to 1). This times one
training step (forward, backward, SGD) of a paper block, conv3x3 + BN + ReLU, with a pooled k=2
head on random images, as the greedy trainer runs it (bf16 autocast where train.amp auto picks it,
channels_last), for the widths given, repeated in alternation so that the machine's drift falls
on every width alike. Prints one CSV row per width and the slowdown against the nearest
multiple of 16 at or above it.

    python benchmarks/width_speed.py                         # 32x32 maps, 64 input channels
    python benchmarks/width_speed.py --size 16 --in-channels 128 --widths 48,51,64,117,128
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from prunegreedy.nn.heads import PooledHead
from prunegreedy.train import runtime
from prunegreedy.train.modes import autocast, autocast_dtype


def step_seconds(width: int, args, amp) -> callable:
    block = torch.nn.Sequential(torch.nn.Conv2d(args.in_channels, width, 3, padding=1, bias=False),
                                torch.nn.BatchNorm2d(width), torch.nn.ReLU())
    head = PooledHead(width, 128, 2, 10, max(2, args.size // 4), [args.size, args.size])
    params = list(block.parameters()) + list(head.parameters())
    for m in (block, head):
        m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(torch.device("cpu"), amp):
                loss = F.cross_entropy(head(block(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / steps
    run(3)  # warm-up: oneDNN picks its kernels
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="24,26,32,45,48,64")
    ap.add_argument("--in-channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", default="auto")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    amp = autocast_dtype(args.amp, torch.device("cpu"))
    widths = [int(w) for w in args.widths.split(",")]
    runs = {w: step_seconds(w, args, amp) for w in widths}
    times: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(args.repeats):
        for w in widths:
            times[w].append(runs[w](args.steps))
    best = {w: min(t) for w, t in times.items()}
    print(f"width,ms_per_step,ms_per_step_per_filter  ({args.in_channels} input channels, {args.size}x{args.size}, "
          f"batch {args.batch}, amp {amp}, best of {args.repeats} x {args.steps} steps)")
    for w in widths:
        print(f"{w},{1000 * best[w]:.1f},{1000 * best[w] / w:.3f}")
    slow = []
    for w in widths:
        up = -(-w // 16) * 16
        if up != w and up in best:
            slow.append(f"{w}: {best[w] / best[up]:.2f}x the time of {up}")
    print("summary: " + ("; ".join(slow) if slow else "every width is a multiple of 16"))


if __name__ == "__main__":
    main()
