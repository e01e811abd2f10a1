"""Cold decode and warm (cached) load of an image-folder CIFAR-10 copy.

    python benchmarks/decode.py --data-dir ~/data/cifar10
Prints a CSV (phase, seconds, images) and a summary line.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from prunegreedy.config import DataConfig
from prunegreedy.data.registry import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(name="cifar10", data_dir=args.data_dir, cache_dir=cache)
        times = []
        for phase in ("cold", "warm"):
            start = time.perf_counter()
            ds = load_dataset(cfg)
            times.append(time.perf_counter() - start)
        n = len(ds.train_y) + len(ds.test_y)
    print("phase,seconds,images")
    print(f"cold,{times[0]:.2f},{n}\nwarm,{times[1]:.2f},{n}")
    print(f"summary: decoded {n:,} images in {times[0]:.1f}s ({n / times[0]:,.0f} images/s, all cores); "
          f"cached load {times[1]:.2f}s")


if __name__ == "__main__":
    main()
