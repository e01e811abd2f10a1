"""Run folders -> pandas tables -> summary.csv, stages.csv and one self-contained report.html.

A run that stopped early (status stopped/failed/interrupted, or fewer finished stages than its plan) is kept
and marked partial: its metrics are those of its last finished stage, and its time is the sum of
its recorded phase times. A folder without a single finished stage is an error, never skipped.

Speed comes from the run folder's optional bench.json (`prunegreedy bench RUN`). An int8 ONNX
export kept inside the run folder (`prunegreedy export RUN --out RUN/int8 --format onnx --int8`)
adds the *_int8 columns: what the export measured, its file size, and its own bench.json.
A run with a budget (--target-macs / --target-params) adds the budget columns (its target, final
count, met); a run with sensitivity.csv adds a sensitivity plot (trainers.decisions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import ConfigError, RunError
from ..fileio import read_json, read_yaml, write_text
from ..records import RUN_FILE, SENSITIVITY_FILE, RunRecord, live_status

STAGE_COLUMNS = ["stage", "phase", "width_in", "width_before", "width", "test_acc", "train_loss", "train_acc",
                 "epochs", "seconds", "images_per_s", "params_backbone", "macs_backbone", "params_stage",
                 "macs_stage", "params_head", "macs_head", "prune_ratio", "removed"]
BENCH_KEYS = ("latency_ms_batch1", "throughput_batch64")  # read from the optional bench.json
REPORT_FILES = ("summary.csv", "stages.csv", "report.html")
SENSITIVITY_COLUMNS = ["stage", "ratio", "width", "holdout_acc", "params_backbone", "macs_backbone"]
# Appended to summary.csv only when some run has a budget (--target-macs / --target-params, see budget_fields).
BUDGET_COLUMNS = ("budget", "budget_target", "budget_final", "budget_met")
# Appended to summary.csv only when some run holds an int8 export (see _read_int8).
INT8_COLUMNS = ("final_acc_int8", "agreement_int8", "bytes_int8", "size_ratio_int8", "latency_ms_batch1_int8",
                "throughput_batch64_int8")


@dataclass
class Run:
    """One run folder, read and checked."""
    name: str
    path: Path
    meta: dict
    config: dict
    stages: pd.DataFrame  # stages.csv as written, every phase row
    bench: dict
    int8: dict = field(default_factory=dict)  # INT8_COLUMNS of the run's int8 export, if it has one

    @property
    def sensitivity(self) -> pd.DataFrame | None:
        """sensitivity.csv of the finished stages (held-out accuracy by prune ratio), if the run has one."""
        return _read_sensitivity(self.path / SENSITIVITY_FILE, self.done)

    @property
    def done(self) -> int:
        return int(self.meta.get("stages_done") or 0)

    @property
    def planned(self) -> int | None:
        """How many stages the run trains: its plan in run.json (older runs: their paper plan's)."""
        from ..nn.plans import make_plan

        stages = (self.meta.get("planned") or {}).get("stages")
        if isinstance(stages, list):
            return len(stages)
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


def _number(path: Path, key: str, v: Any) -> float | None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise RunError(f"{path}: {key} must be a number, got {v!r}")
    return v


def _read_int8(run: Path) -> dict:
    """The newest int8 ONNX export directly inside the run folder (RUN/<name>/backbone.json with format
    onnx-int8): test accuracy and top-1 agreement its export measured, file size, and its bench.json."""
    found = []
    for spec_path in run.glob("*/backbone.json"):
        spec = read_json(spec_path)
        if isinstance(spec, dict) and spec.get("format") == "onnx-int8":
            found.append((spec_path.stat().st_mtime, spec_path, spec))
    if not found:
        return {}
    _, spec_path, spec = max(found, key=lambda t: t[0])
    q = spec.get("quantization") if isinstance(spec.get("quantization"), dict) else {}
    check = q.get("check") if isinstance(q.get("check"), dict) else {}
    size, fp32 = _number(spec_path, "bytes", q.get("bytes")), _number(spec_path, "fp32_bytes", q.get("fp32_bytes"))
    bench = _read_bench(spec_path.parent / "bench.json")
    return {"final_acc_int8": _number(spec_path, "test_acc_int8", check.get("test_acc_int8")),
            "agreement_int8": _number(spec_path, "top1_agreement", check.get("top1_agreement")),
            "bytes_int8": size, "size_ratio_int8": round(size / fp32, 4) if size and fp32 else None,
            "latency_ms_batch1_int8": bench.get("latency_ms_batch1"),
            "throughput_batch64_int8": bench.get("throughput_batch64")}


def load_run(path: Path) -> Run:
    path = Path(path)
    if not RunRecord.is_run(path):
        raise RunError(f"{path} is not a run folder (no {RUN_FILE})")
    meta = read_json(path / RUN_FILE)
    if not isinstance(meta, dict):
        raise RunError(f"{path / RUN_FILE} is not a JSON object (damaged or tampered)")
    meta["status"] = live_status(path, meta.get("status"))  # a run whose process is gone is stopped
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
    return Run(name, path, meta, config, stages, _read_bench(path / "bench.json"), _read_int8(path))


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


def chosen_ratios(run: Run) -> dict[int, float]:
    """{stage: prune ratio} a budgeted run chose for its finished stages (run.json "budget"); else {}."""
    b = run.meta.get("budget")
    stages = b.get("stages") if isinstance(b, dict) else None
    if not isinstance(stages, dict):
        return {}
    try:
        return {int(k): float(v["ratio"]) for k, v in stages.items() if int(k) <= run.done}
    except (TypeError, ValueError, KeyError):
        raise RunError(f"{run.path / RUN_FILE}: budget.stages is damaged") from None


def used_ratio_text(run: Run) -> str:
    """The ratios the run pruned with: those its budget chose, else as configured (ratio_text)."""
    chosen = chosen_ratios(run)
    return ",".join(f"{chosen[k]:g}" for k in sorted(chosen)) if chosen else ratio_text(_compress(run))


def budget_fields(run: Run) -> dict:
    """BUDGET_COLUMNS of a budgeted run: "macs 0.25x", the target count, the final count (of the last
    finished stage for a partial run) and whether it is within the target (None until finished)."""
    b = run.meta.get("budget")
    if not isinstance(b, dict) or b.get("kind") not in ("macs", "params"):
        return {}
    kind, target = b["kind"], b.get("target")
    final = run.metric(kind, lambda row: row[f"{kind}_backbone"])
    met = bool(final <= target) if isinstance(target, int) and run.finished and not run.partial else None
    return {"budget": f"{kind} {b.get('request')}", "budget_target": target, "budget_final": final,
            "budget_met": met}


def _read_sensitivity(path: Path, done: int) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise RunError(f"{path} is not a valid CSV table (damaged or tampered)") from None
    missing = [c for c in SENSITIVITY_COLUMNS if c not in df.columns]
    if missing:
        raise RunError(f"{path} lacks columns: {', '.join(missing)}")
    return df[df["stage"] <= done]


def _k(run: Run) -> int | None:
    from ..nn.plans import PLANS

    m = run.config.get("model") or {}
    plan = m.get("arch") or m.get("plan", run.meta.get("plan"))
    return m.get("k") or (PLANS[plan](1.0)[0].k if plan in PLANS else None)


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
    "prune_ratio": lambda r: used_ratio_text(r),
    "importance": lambda r: None if _compress(r).get("hook", "none") == "none" else _compress(r).get("importance"),
    "reference": lambda r: all(float(x) == 0 for x in used_ratio_text(r).split(",")),
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
    if any(r.int8 for r in runs):
        for col in INT8_COLUMNS:
            df[col] = [r.int8.get(col) for r in runs]
    if any(r.meta.get("budget") for r in runs):
        for col in BUDGET_COLUMNS:
            df[col] = [budget_fields(r).get(col) for r in runs]
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
    from .plots import render_plots, sensitivity_plots

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
        "report.html": lambda: render_html(summary, stages, render_plots(summary, stage_finals(runs))
                                           + sensitivity_plots([(r.name, r.sensitivity, chosen_ratios(r))
                                                                for r in runs])),
    }
    names = [n for n in REPORT_FILES if not (n == "stages.csv" and RunRecord.is_run(out))]
    for n in names:
        write_text(out / n, texts[n]())
    return [out / n for n in names]
