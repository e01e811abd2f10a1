"""Which conv shapes of the fast recipe train slower in bf16 than in fp32 on this CPU?

oneDNN picks a kernel per shape and dtype; its bf16 weight-gradient kernel has been measured several
times slower than fp32 for some shapes. This times one forward + backward (input and weight
gradients, as a stage trains it) of every 3x3 conv the fast network trains, at its recipe widths,
pruned widths and the widths in between (a stage whose input the previous cut narrowed), channels_last,
batch 1024, in fp32 and under bf16 autocast, alternating so drift falls on both alike. Prints a CSV
row per shape with the median milliseconds and bf16/fp32; `ONEDNN_VERBOSE=1` in the environment
names the kernels.

    python benchmarks/conv_dtype.py [--batch 1024] [--repeats 5] [--widths 64-256-256,32-128-128]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunegreedy.train import runtime
from prunegreedy.train.modes import autocast


def shapes(widths: list[tuple[int, ...]]) -> list[tuple[int, int, int]]:
    """(in, out, side) of every conv of fastcifar-W1-W2-... on 32x32 images: the stem gives 24 channels at 31x31."""
    out: set[tuple[int, int, int]] = set()
    for ws in widths:
        c, side = 24, 31
        for w in ws:
            out.add((c, w, side))
            side //= 2
            out.add((w, w, side))
            c = w
    return sorted(out, key=lambda s: (-s[2], s[0], s[1]))


def timer(cin: int, cout: int, side: int, batch: int, bf16: bool):
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last).requires_grad_(True)
    g = torch.randn(batch, cout, side, side).to(memory_format=torch.channels_last)

    def once() -> float:
        start = time.perf_counter()
        with autocast(torch.device("cpu"), torch.bfloat16 if bf16 else None):
            y = conv(x)
        y.backward(g.to(y.dtype))
        conv.weight.grad = x.grad = None
        return time.perf_counter() - start
    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--widths", default="64-256-256,32-128-128,32-256-256,32-128-256",
                    help="fast networks' group widths, comma separated (the recipes' and those a cut passes through)")
    args = ap.parse_args()
    runtime.setup(torch.device("cpu"), None)
    flags = open("/proc/cpuinfo").read()
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, avx512_bf16 "
          f"{'avx512_bf16' in flags}, amx_bf16 {'amx_bf16' in flags}")
    print("in,out,side,fp32_ms,bf16_ms,bf16_over_fp32")
    for cin, cout, side in shapes([tuple(int(w) for w in s.split("-")) for s in args.widths.split(",")]):
        runs = {False: timer(cin, cout, side, args.batch, False), True: timer(cin, cout, side, args.batch, True)}
        for run in runs.values():
            run()  # warm-up: oneDNN builds its kernels on first use
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, run in runs.items():
                times[k].append(run())
        fp32, bf16 = (1000 * statistics.median(times[k]) for k in (False, True))
        print(f"{cin},{cout},{side},{fp32:.1f},{bf16:.1f},{bf16 / fp32:.2f}", flush=True)


if __name__ == "__main__":
    main()
