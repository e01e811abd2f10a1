"""Throughput of an unpruned vs a pruned backbone, and exported file size vs parameter count.

    python benchmarks/export_speed.py [UNPRUNED_RUN PRUNED_RUN] [--threads N] [--repeats R]

Both backbones (blocks only, BatchNorm folded, as `prunegreedy export` writes them) are loaded
from their native export and timed in one process at batch 64, taking turns within every
repeat so that a change in machine load hits both alike; the median is reported. Each is also
exported as TorchScript and ONNX (when onnx/onnxruntime are installed) to compare file sizes
with 4 bytes per parameter. Without run folders, two random-weight networks of the
`cifar10-cpu` shape are used: plan cifar10-k2 at width_mult 0.5 (widths 64,64,128,128) and the
same pruned by half (32,32,64,64). Prints a CSV, then a one-line summary.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from prunegreedy.deploy.bench import time_alternating
from prunegreedy.deploy.bench import torch_threads
from prunegreedy.data.registry import CIFAR10_CLASSES
from prunegreedy.data.registry import CIFAR10_MEAN
from prunegreedy.data.registry import CIFAR10_STD
from prunegreedy.deploy.deployed import open_export
from prunegreedy.errors import PrunegreedyError
from prunegreedy.deploy.export import WRITERS
from prunegreedy.compress.network import head_settings, network_spec
from prunegreedy.deploy.export import export_network
from prunegreedy.deploy.network import deployable, fold_trained, load_trained
from prunegreedy.measure.size import count_macs, output_shape
from prunegreedy.nn.network import Network, build_network

INPUT_SHAPE = (3, 32, 32)
# fvcore (MAC counts) scripts a function at import, which current torch flags as deprecated.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def random_net(widths: list[int] | None, seed: int) -> tuple[Network, list, dict]:
    """A cifar10-cpu shaped network (k=2 plan at half width) with random weights and BN statistics;
    `widths` as if pruned (its heads then scale with the widths)."""
    torch.manual_seed(seed)
    net = build_network("cifar10-k2", len(CIFAR10_CLASSES), INPUT_SHAPE[1],
                        {"widths": widths} if widths is not None else {"width_mult": 0.5})
    heads, shape = [], INPUT_SHAPE
    for j in range(len(net.stages)):
        shape = output_shape(net.module(j, shape[0]), shape)
        heads.append(net.head(j, shape))
    with torch.no_grad():  # non-trivial statistics, so folding has something to fold
        for m in [net.model, *heads]:
            for bn in m.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    bn.running_mean.normal_(0, 0.1)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_(0, 0.1)
    spec = network_spec(net, {"image_shape": list(INPUT_SHAPE), "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD),
                              "classes": list(CIFAR10_CLASSES)})
    spec.update(heads={str(j): head_settings(s.spec) for j, s in enumerate(net.stages)},
                pruning=[None] * len(net.stages))
    net.model.eval()
    return net, [h.eval() for h in heads], spec


def formats() -> list[str]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return [f for f in WRITERS if f != "onnx"]
    return list(WRITERS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="UNPRUNED_RUN PRUNED_RUN (default: random-weight nets)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    if len(args.runs) not in (0, 2):
        ap.error("give two run folders (unpruned, pruned) or none")
    try:
        if args.runs:
            labels = ("unpruned", "pruned")
            nets = {f"{label}:{run.name}": load_trained(run) for label, run in zip(labels, args.runs)}
        else:
            nets = {"unpruned": random_net(None, 0), "pruned": random_net([32, 32, 64, 64], 1)}
        rows, models = [], {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, (net, heads, spec) in nets.items():
                backbone = deployable(*fold_trained(net, heads, spec)[:2], with_head=False)
                params = sum(p.numel() for p in backbone.parameters())
                widths = [output_shape(m, tuple(spec["input_shape"]))[0] for m in [backbone[:i + 1] for i in range(len(backbone))]]
                row = {"name": name, "widths": ",".join(map(str, widths)),
                       "params": params, "mmacs": round(count_macs(backbone, tuple(spec["input_shape"])) / 1e6, 2)}
                for fmt in formats():
                    out = Path(tmp) / f"{len(rows)}-{fmt}"
                    r = export_network(net, heads, spec, out, fmt)
                    row[f"{fmt}_bytes"] = r["bytes"]
                    row[f"{fmt}_per_4params"] = round(r["bytes"] / (4 * params), 4)
                    if fmt == "native":
                        models[name] = open_export(out)
                rows.append(row)
            shape = nets[next(iter(nets))][2]["input_shape"]
            x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
            with torch_threads(args.threads):
                times = time_alternating(models, x, args.repeats)
    except PrunegreedyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        row["throughput_batch64"] = round(64 / statistics.median(times[row["name"]]), 1)
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    base, pruned = rows
    speedup = pruned["throughput_batch64"] / base["throughput_batch64"]
    print(f"summary: pruned backbone ({pruned['widths']}) runs {speedup:.2f}x the throughput of the unpruned one "
          f"({base['widths']}) at batch 64 ({pruned['throughput_batch64']:,.0f} vs "
          f"{base['throughput_batch64']:,.0f} images/s) with {base['params'] / pruned['params']:.2f}x fewer params and "
          f"{base['mmacs'] / pruned['mmacs']:.2f}x fewer MACs; native file = {pruned['native_per_4params']:.4f} x "
          f"4 bytes/param; threads {args.threads}, median of {args.repeats} alternating repeats, "
          f"torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
