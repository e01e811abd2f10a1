"""Int8 vs fp32 ONNX of one run's network with head: test accuracy, file size, speed, side by side.

    python benchmarks/int8.py RUN [--data-dir D] --out O [--calibration 1000] [--threads N] [--repeats R]

Exports the run's latest network with its head twice, as `prunegreedy export` does: fp32 ONNX
into O/fp32 and int8 ONNX (static QDQ, per-channel weights) into O/int8, calibrated on training
images of the dataset at D (the run's dataset, e.g. CIFAR-10; without --data-dir the bundled
sample cifar10-sample). Both run in ONNX Runtime: accuracy on the full test split, then batch-64
throughput and batch-1 latency timed in one process, the two models taking turns within every
repeat so that a change in machine load hits both alike (medians). Prints a CSV, then a one-line
summary with the accuracy drop, size ratio and throughput ratio, and whether the CPU has VNNI.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import warnings
from pathlib import Path

import torch

from prunegreedy.config import DataConfig
from prunegreedy.data.registry import load_dataset
from prunegreedy.deploy.bench import time_alternating
from prunegreedy.deploy.bench import torch_threads
from prunegreedy.deploy.deployed import evaluate
from prunegreedy.deploy.deployed import open_export
from prunegreedy.deploy.export import export_run
from prunegreedy.deploy.export import run_dataset
from prunegreedy.deploy.quantize import DEFAULT_CALIBRATION
from prunegreedy.errors import PrunegreedyError

# fvcore (imported with the run's model) scripts a function at import, which current torch flags.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def vnni_flags() -> str:
    """The CPU's VNNI flags (int8 dot products without int16 saturation), or 'none'."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    return ",".join(sorted(f for f in flags.split() if "vnni" in f)) or "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder")
    ap.add_argument("--data-dir", type=Path, help="the run's dataset (default: the bundled cifar10-sample)")
    ap.add_argument("--out", type=Path, required=True, help="new folder for the fp32/ and int8/ exports")
    ap.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION, help="training images to calibrate on")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    try:
        ds = (run_dataset(args.run, args.data_dir) if args.data_dir is not None
              else load_dataset(DataConfig(name="cifar10-sample")))
        export_run(args.run, args.out / "fp32", "onnx", with_head=True)
        int8 = export_run(args.run, args.out / "int8", "onnx", with_head=True, calibration=args.calibration,
                          calibration_data=ds)
        models = {name: open_export(args.out / name, args.threads) for name in ("fp32", "int8")}
        acc = {name: evaluate(m, ds) for name, m in models.items()}
    except PrunegreedyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shape = models["fp32"].spec["input_shape"]
    gen = torch.Generator().manual_seed(0)
    x1, x64 = torch.randn(1, *shape, generator=gen), torch.randn(64, *shape, generator=gen)
    with torch_threads(args.threads):
        batch = time_alternating(models, x64, args.repeats)
        single = time_alternating(models, x1, args.repeats, number=20)
    check = int8["quantization"]["check"]
    rows = []
    for name, m in models.items():
        path = m.folder / ("backbone.onnx" if name == "fp32" else "backbone.int8.onnx")
        rows.append({"model": name, "file": path.name, "bytes": path.stat().st_size, "test_acc": acc[name]["acc"],
                     "test_images": acc[name]["images"], "dataset": acc[name]["dataset"],
                     "top1_agreement": 1.0 if name == "fp32" else check["top1_agreement"],
                     "throughput_batch64": round(64 / statistics.median(batch[name]), 1),
                     "latency_ms_batch1": round(1e3 * statistics.median(single[name]), 4)})
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    fp, q = rows
    import onnxruntime

    print(f"summary: int8 test acc {q['test_acc']:.2f} % vs fp32 {fp['test_acc']:.2f} % (drop "
          f"{fp['test_acc'] - q['test_acc']:.2f} points, target <= 0.5) on {fp['test_images']:,} {fp['dataset']} "
          f"test images, top-1 agreement {100 * q['top1_agreement']:.2f} %; file {q['bytes'] / fp['bytes']:.3f}x of "
          f"fp32 ONNX ({q['bytes']:,} vs {fp['bytes']:,} bytes, target <= 0.3); batch-64 throughput "
          f"{q['throughput_batch64'] / fp['throughput_batch64']:.2f}x ({q['throughput_batch64']:,.0f} vs "
          f"{fp['throughput_batch64']:,.0f} images/s), batch-1 latency {q['latency_ms_batch1']:.3f} vs "
          f"{fp['latency_ms_batch1']:.3f} ms; calibrated on {args.calibration:,} training images; threads "
          f"{args.threads}, median of {args.repeats} alternating repeats, onnxruntime {onnxruntime.__version__}, "
          f"CPU VNNI: {vnni_flags()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
