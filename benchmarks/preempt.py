"""SIGTERM in the middle of an epoch of the CPU recipe, then --resume, against an uninterrupted run;
and the cost of a checkpoint inside an epoch (train.checkpoint_every).

    python benchmarks/preempt.py --data-dir ~/data/cifar10-jpeg --out bench-preempt [--after 150]

Runs one after another (an idle machine): OUT/whole (uninterrupted), OUT/stopped (SIGTERM `--after`
seconds into training, then resumed). Prints whether stages.csv is identical (timing aside), the
checkpoint the stop left, and the seconds one checkpoint of the recipe's largest stage takes, as a
share of the run. A finished OUT/whole is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

TIMING = ["seconds", "images_per_s"]


def cli(*args: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prunegreedy", "run", *args, "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_seconds(run: Path, repeats: int = 5) -> tuple[float, int]:
    """(seconds per checkpoint, bytes) of the largest stage of a finished run, written as a stop writes it."""
    import torch

    from prunegreedy.deploy.network import load_trained
    from prunegreedy.records import RunRecord
    from prunegreedy.train.loop import LoopState

    record = RunRecord.open(run)
    net, heads, _ = load_trained(run)
    blocks = net.modules_of()
    j = max(range(len(blocks)), key=lambda i: sum(p.numel() for p in blocks[i].parameters()))
    modules = {"block": blocks[j], "head": heads[j]}
    params = [p for m in modules.values() for p in m.parameters()]
    state = LoopState(10, 1280, 1.0, [1.0], [1], torch.Generator().get_state(), [torch.zeros_like(p) for p in params])
    t0 = time.perf_counter()
    for _ in range(repeats):
        record.save_partial(99, modules, state)
    seconds = (time.perf_counter() - t0) / repeats
    path = run / "checkpoints" / "partial-stage-99.safetensors"
    size = path.stat().st_size
    path.unlink()
    return seconds, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="cifar10-cpu")
    ap.add_argument("--after", type=float, default=150.0, help="seconds of training before the SIGTERM")
    args = ap.parse_args()
    common = ["--config", args.config, "--data-dir", args.data_dir, "--seed", "0"]
    whole, stopped = args.out / "whole", args.out / "stopped"
    if not (whole / "run.json").exists() or json.loads((whole / "run.json").read_text())["status"] != "finished":
        p = cli(*common, out=whole)
        p.communicate()
        assert p.returncode == 0, f"uninterrupted run failed ({p.returncode})"
    if not stopped.exists():
        p = cli(*common, out=stopped)
        while not (stopped / "run.json").exists():
            time.sleep(0.1)
        time.sleep(args.after)
        p.send_signal(signal.SIGTERM)
        log, _ = p.communicate()
        meta = json.loads((stopped / "run.json").read_text())
        print(f"SIGTERM after {args.after:.0f} s: exit code {p.returncode}, status {meta['status']}, "
              f"{meta['stages_done']} stage(s) done; last line: {log.strip().splitlines()[-1]}")
        p = subprocess.Popen([sys.executable, "-m", "prunegreedy", "run", "--resume", str(stopped), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log, _ = p.communicate()
        assert p.returncode == 0, log[-2000:]
        print(f"resume: {next(line for line in log.splitlines() if 'continuing from' in line)}")
    a, b = (pd.read_csv(r / "stages.csv").drop(columns=TIMING) for r in (whole, stopped))
    same = a.equals(b)
    print(f"stages.csv identical to the uninterrupted run (timing aside): {same}")
    if not same:
        print(a.compare(b))
    ma, mb = (json.loads((r / "run.json").read_text()) for r in (whole, stopped))
    print(f"final test acc {ma['final_acc']} vs {mb['final_acc']}; seconds {ma['seconds']} (whole) vs "
          f"{mb['seconds']} (both parts of the stopped run)")
    seconds, size = checkpoint_seconds(whole)
    run_s = ma["seconds"]
    every = 15.0
    extra = int(run_s // (every * 60))
    print(f"one checkpoint inside an epoch: {seconds:.3f} s ({size / 1e6:.1f} MB); at checkpoint_every {every:g} "
          f"min a {run_s / 60:.1f}-min run writes at most {extra} more ({100 * extra * seconds / run_s:.3f} % of it); "
          f"even one a minute would cost {100 * seconds / 60:.3f} %  [{os.cpu_count()} CPUs]")


if __name__ == "__main__":
    main()
