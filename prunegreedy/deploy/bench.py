"""CPU inference speed: latency at batch 1 and throughput at batch 64 (warm-up, repeats, median).

`bench_path` measures an export as exported (its own runtime and head), or a run folder's
latest network folded the way `export` folds it, and writes `bench.json` beside it:

    {"latency_ms_batch1", "throughput_batch64", "threads", "repeats", "torch", "format", "source", "with_head"}

Inputs are random: speed does not depend on pixel values for these networks.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
import torch

from .backbone import SPEC_FILE
from ..errors import ConfigError, ExportError
from .deployed import Forward
from ..fileio import write_json
from ..records import RUN_FILE

BENCH_FILE = "bench.json"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with n intra-op threads, then restore the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_alternating(fns: dict[str, Forward], x: torch.Tensor, repeats: int, number: int = 1,
                     warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` times. The functions take turns within each
    repeat, so a change in machine load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(number):
                    fn(x)
                times[name].append((time.perf_counter() - start) / number)
    return times


def measure(fn: Forward, input_shape, threads: int, repeats: int = 10) -> dict:
    """Median latency (ms) at batch 1 and median throughput (images/s) at batch 64."""
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, *input_shape, generator=gen)
    x64 = torch.randn(64, *input_shape, generator=gen)
    with torch_threads(threads):
        latency = statistics.median(time_alternating({"m": fn}, x1, repeats, number=10)["m"])
        batch = statistics.median(time_alternating({"m": fn}, x64, repeats)["m"])
    return {"latency_ms_batch1": round(latency * 1e3, 4), "throughput_batch64": round(64 / batch, 1),
            "threads": threads, "repeats": repeats, "torch": torch.__version__}


def bench_path(path: Path, threads: int | None = None, repeats: int = 10,
               with_head: bool = False) -> tuple[dict, Path]:
    """Measure an export folder, or a run folder's folded network; write and return bench.json."""
    from .deployed import open_export
    from .export import folded_run

    path = Path(path)
    threads = threads if threads is not None else torch.get_num_threads()
    if threads < 1 or repeats < 1:
        raise ConfigError(f"--threads and --repeats must be at least 1, got {threads} and {repeats}")
    if (path / RUN_FILE).exists() and not (path / SPEC_FILE).exists():
        (fn, shape), folder = folded_run(path, with_head), path
        what = {"format": "native", "source": "run", "with_head": with_head}
    else:
        deployed = open_export(path, threads)
        if with_head and not deployed.with_head:
            raise ExportError(f"{deployed.folder} was exported without a head; --with-head applies to run folders")
        fn, shape, folder = deployed, deployed.spec["input_shape"], deployed.folder
        what = {"format": deployed.spec["format"], "source": "export", "with_head": deployed.with_head}
    result = {**measure(fn, shape, threads, repeats), **what}
    write_json(folder / BENCH_FILE, result)
    return result, folder / BENCH_FILE
