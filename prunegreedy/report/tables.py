"""Run folders -> pandas tables -> summary.csv, stages.csv and one self-contained report.html.

A run that stopped early (status running/failed, or fewer finished stages than its plan) is kept
and marked partial: its metrics are those of its last finished stage, and its time is the sum of
its recorded phase times. A folder without a single finished stage is an error, never skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import ConfigError, RunError
from ..fileio import read_json, read_yaml, write_text
from ..records import RUN_FILE, RunDir

STAGE_COLUMNS = ["stage", "phase", "width_in", "width_before", "width", "test_acc", "train_loss", "train_acc",
                 "epochs", "seconds", "images_per_s", "params_backbone", "macs_backbone", "params_stage",
                 "macs_stage", "params_head", "macs_head", "prune_ratio", "removed"]
BENCH_KEYS = ("latency_ms_batch1", "throughput_batch64")  # read from the optional bench.json
REPORT_FILES = ("summary.csv", "stages.csv", "report.html")


@dataclass
class Run:
    """One run folder, read and checked."""
    name: str
    path: Path
    meta: dict
    config: dict
    stages: pd.DataFrame  # stages.csv as written, every phase row
    bench: dict

    @property
    def done(self) -> int:
        return int(self.meta.get("stages_done") or 0)

    @property
    def planned(self) -> int | None:
        from ..nn.plans import make_plan

        m = self.config.get("model") or {}
        try:
            return len(make_plan(m.get("plan", self.meta.get("plan")), m.get("width_mult", 1.0), m.get("widths")))
        except (ConfigError, TypeError):  # a plan this version does not know: trust the widths list
            return len(m["widths"]) if isinstance(m.get("widths"), list) else None

    @property
    def finished(self) -> bool:
        return self.meta.get("status") == "finished"

    @property
    def partial(self) -> bool:
        return not self.finished or (self.planned is not None and self.done < self.planned)

    @property
    def last_row(self) -> pd.Series:
        """The final state of the last finished stage: its last phase row."""
        return self.stages[self.stages["stage"] == self.done].iloc[-1]

    def metric(self, meta_key: str, row: Callable[[pd.Series], Any]) -> Any:
        # A finished run's own totals; a partial run's numbers at its last finished stage.
        if self.finished and meta_key in self.meta:
            return self.meta[meta_key]
        return row(self.last_row)


def _read_bench(path: Path) -> dict:
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a JSON object")
    for key in BENCH_KEYS:
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], (int, float))):
            raise RunError(f"{path}: {key} must be a number, got {data[key]!r}")
    return {k: data[k] for k in BENCH_KEYS if k in data}


def load_run(path: Path) -> Run:
    path = Path(path)
    if not RunDir.is_run(path):
        raise RunError(f"{path} is not a run folder (no {RUN_FILE})")
    meta = read_json(path / RUN_FILE)
    if not isinstance(meta, dict):
        raise RunError(f"{path / RUN_FILE} is not a JSON object (damaged or tampered)")
    name = path.resolve().name
    done = meta.get("stages_done")
    if not isinstance(done, int) or isinstance(done, bool) or done < 1:
        raise RunError(f"run {name} ({path}) has no finished stage yet; nothing to report")
    try:
        stages = pd.read_csv(path / "stages.csv")
    except FileNotFoundError:
        raise RunError(f"missing file {path / 'stages.csv'}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise RunError(f"{path / 'stages.csv'} is not a valid CSV table (damaged or tampered)") from None
    missing = [c for c in STAGE_COLUMNS if c not in stages.columns]
    if missing:
        raise RunError(f"{path / 'stages.csv'} lacks columns: {', '.join(missing)}")
    config = read_yaml(path / "config.yaml")
    # An end-to-end run records one "stage": the whole network, numbered by its last block.
    expected = {done} if _trainer(config) == "end-to-end" else set(range(1, done + 1))
    absent = sorted(expected - set(stages["stage"]))
    if absent:
        raise RunError(f"{path / 'stages.csv'} has no rows for finished stage(s) {absent}")
    return Run(name, path, meta, config, stages, _read_bench(path / "bench.json"))


def _trainer(config: dict) -> str:
    return (config.get("train") or {}).get("trainer", "greedy")


def load_runs(paths: list[Path]) -> list[Run]:
    """Every folder must be a run with a finished stage; names (folder names) must be unique."""
    runs = [load_run(p) for p in paths]
    seen: dict[str, Path] = {}
    for r in runs:
        if r.name in seen:
            raise RunError(f"two runs are named '{r.name}' ({seen[r.name]} and {r.path}); "
                           "reports tell runs apart by folder name")
        seen[r.name] = r.path
    return runs


def ratio_text(compress: dict) -> str:
    """The prune ratio as configured: '0.5', or one value per stage '0.25,0.5,...'; hook none is '0'."""
    if compress.get("hook", "none") == "none":
        return "0"
    if compress.get("ratios"):
        return ",".join(f"{float(r):g}" for r in compress["ratios"])
    return f"{float(compress.get('ratio') or 0):g}"


def _k(run: Run) -> int | None:
    from ..nn.plans import PLANS

    plan = (run.config.get("model") or {}).get("plan", run.meta.get("plan"))
    return PLANS[plan](1.0)[0].k if plan in PLANS else None


def _compress(run: Run) -> dict:
    return run.config.get("compress") or {}


def _model_bytes(run: Run) -> int | None:
    weights = run.path / "model.safetensors"
    return weights.stat().st_size if weights.exists() else None


def _seconds(run: Run) -> float:
    if run.finished and "seconds" in run.meta:
        return run.meta["seconds"]
    return float(run.stages.loc[run.stages["stage"] <= run.done, "seconds"].sum())


# summary.csv: column -> how to read it from a run, in column order.
SUMMARY_FIELDS: dict[str, Callable[[Run], Any]] = {
    "run": lambda r: r.name,
    "status": lambda r: r.meta.get("status", "unknown"),
    "partial": lambda r: r.partial,
    "dataset": lambda r: (r.meta.get("dataset") or {}).get("name"),
    "plan": lambda r: (r.config.get("model") or {}).get("plan", r.meta.get("plan")),
    "trainer": lambda r: _trainer(r.config),
    "k": _k,
    "stages_done": lambda r: r.done,
    "stages_planned": lambda r: r.planned,
    "hook": lambda r: _compress(r).get("hook", "none"),
    "prune_ratio": lambda r: ratio_text(_compress(r)),
    "importance": lambda r: None if _compress(r).get("hook", "none") == "none" else _compress(r).get("importance"),
    "reference": lambda r: all(float(x) == 0 for x in ratio_text(_compress(r)).split(",")),
    "final_acc": lambda r: r.metric("final_acc", lambda row: row["test_acc"]),
    "ensemble_acc": lambda r: r.meta.get("ensemble_acc") if r.finished else None,
    "params": lambda r: r.metric("params", lambda row: row["params_backbone"]),
    "macs": lambda r: r.metric("macs", lambda row: row["macs_backbone"]),
    "latency_ms_batch1": lambda r: r.bench.get("latency_ms_batch1"),
    "throughput_batch64": lambda r: r.bench.get("throughput_batch64"),
    "params_with_head": lambda r: r.metric("params_with_head", lambda row: row["params_backbone"] + row["params_head"]),
    "macs_with_head": lambda r: r.metric("macs_with_head", lambda row: row["macs_backbone"] + row["macs_head"]),
    "model_bytes": _model_bytes,
    "seconds": _seconds,
    "device": lambda r: r.meta.get("device"),
    "started": lambda r: r.meta.get("started"),
}
SUMMARY_COLUMNS = list(SUMMARY_FIELDS) + ["pareto_params", "pareto_macs"]


def pareto_front(cost: list[float], acc: list[float]) -> list[int]:
    """Indices of the points no other point beats with lower-or-equal cost and higher accuracy."""
    ok = [i for i in range(len(cost)) if not (math.isnan(cost[i]) or math.isnan(acc[i]))]
    front, best = [], -math.inf
    for i in sorted(ok, key=lambda i: (cost[i], -acc[i])):
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def summary_table(runs: list[Run]) -> pd.DataFrame:
    df = pd.DataFrame([{col: get(r) for col, get in SUMMARY_FIELDS.items()} for r in runs],
                      columns=list(SUMMARY_FIELDS))
    for cost in ("params", "macs"):
        # Partial runs are not candidates: their accuracy is that of a shorter network than planned.
        eligible = df[~df["partial"].astype(bool)]
        front = pareto_front(eligible[cost].astype(float).tolist(), eligible["final_acc"].astype(float).tolist())
        df[f"pareto_{cost}"] = df.index.isin(eligible.index[front])
    return df


def stages_table(runs: list[Run]) -> pd.DataFrame:
    """The tidy table: one row per (run, stage, phase), every column of the runs' stages.csv."""
    return pd.concat([r.stages.assign(run=r.name)[["run"] + list(r.stages.columns)] for r in runs],
                     ignore_index=True)


def stage_finals(runs: list[Run]) -> pd.DataFrame:
    """One row per finished (run, stage): its final phase, plus the time of all its phases."""
    out = []
    for r in runs:
        done = r.stages[r.stages["stage"] <= r.done]
        last = done.groupby("stage", sort=True).tail(1).set_index("stage")
        last["stage_seconds"] = done.groupby("stage")["seconds"].sum()
        out.append(last.reset_index().assign(run=r.name))
    return pd.concat(out, ignore_index=True)


def write_report(runs: list[Run], out: Path) -> list[Path]:
    """Write the report files into `out`. Into a run folder, never overwrite its own stages.csv."""
    from .html import render_html
    from .plots import render_plots

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunError(f"--out {out} exists and is not a folder") from None
    except OSError as e:
        raise RunError(f"cannot create report folder {out}: {e.strerror}") from None
    summary, stages = summary_table(runs), stages_table(runs)
    texts = {
        "summary.csv": lambda: summary.to_csv(index=False),
        "stages.csv": lambda: stages.to_csv(index=False),
        "report.html": lambda: render_html(summary, stages, render_plots(summary, stage_finals(runs))),
    }
    names = [n for n in REPORT_FILES if not (n == "stages.csv" and RunDir.is_run(out))]
    for n in names:
        write_text(out / n, texts[n]())
    return [out / n for n in names]
