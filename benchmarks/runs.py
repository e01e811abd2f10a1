"""What the benchmarks that train full runs share: a plain log, and runs that are skipped when finished.

A benchmark of several full runs may not fit one session: every run lands in OUT/<name>, a
finished one is kept and reused, an unfinished leftover is moved aside (never deleted).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import prunegreedy
from prunegreedy import config
from prunegreedy.fileio import read_json
from prunegreedy.records import RunRecord


class PrintUI:
    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    def progress(self, desc: str):
        return None


def finished(path: Path) -> dict | None:
    if RunRecord.is_run(path):
        meta = read_json(path / "run.json")
        if meta.get("status") == "finished":
            return meta
    return None


def run_once(name: str, recipe: str, over: dict, base: dict, out: Path, ds, ui) -> dict:
    """Train recipe + base + over into out/name on the loaded dataset `ds` (prunegreedy.fit), or
    return the run.json of a finished one there."""
    path = out / name
    meta = finished(path)
    if meta is not None:
        ui.log(f"{name}: already finished in {path}, skipped")
        return meta
    if path.exists():
        aside = path.with_name(f"{name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        ui.log(f"{name}: moved the unfinished leftover aside to {aside}")
    ui.log(f"{name}: training into {path} ({recipe} {over})")
    return prunegreedy.fit(recipe, out=path, dataset=ds, set=config.merge(base, over), ui=ui).meta
