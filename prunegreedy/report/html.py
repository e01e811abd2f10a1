"""report.html: one self-contained page (inline CSS, plots as base64 SVG images, no scripts).

Every string that came from a run folder (names, config values, statuses) goes through
`html.escape`, so a run named `a<b>` prints as text and cannot inject markup.
"""
from __future__ import annotations

import base64
import html
import math
import time
from typing import Any, Callable, Iterable

import pandas as pd

from .plots import MACS_NOTE, Plot

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-variant-numeric: tabular-nums; }
table { font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .45em; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th { background: #f3f3f3; } td.text { text-align: left; }
tr.partial td { background: #fff6e0; } .tag { color: #a15c00; font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1.5em; }
figure { margin: 0; }
figure img { width: 100%; height: auto; } figcaption { font-size: 12px; color: #555; }
.wide { overflow-x: auto; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(f: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda v: "–" if _missing(v) else f(v)


def _si(v: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f}"


def _bytes(v: float) -> str:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if v >= scale:
            return f"{v / scale:,.1f} {unit}"
    return f"{v:,.0f} B"


def _secs(v: float) -> str:
    return f"{v:,.1f} s" if v < 120 else f"{v / 60:,.1f} min" if v < 7200 else f"{v / 3600:,.1f} h"


INT, PCT, SI, SECS = _fmt(lambda v: f"{int(v):,}"), _fmt(lambda v: f"{v:.2f} %"), _fmt(_si), _fmt(_secs)
TEXT = _fmt(str)

# Summary table: (header, column, formatter, is text).
SUMMARY_VIEW = [
    ("Run", "run", TEXT, True), ("Status", "status", TEXT, True), ("Plan", "plan", TEXT, True),
    ("Trainer", "trainer", TEXT, True),
    ("k", "k", INT, False), ("Hook", "hook", TEXT, True), ("Prune ratio", "prune_ratio", TEXT, True),
    ("Importance", "importance", TEXT, True), ("Stages", "stages", TEXT, False),
    ("Final acc", "final_acc", PCT, False), ("Ensemble acc", "ensemble_acc", PCT, False),
    ("Params", "params", INT, False), ("MACs", "macs", SI, False),
    ("Latency b1", "latency_ms_batch1", _fmt(lambda v: f"{v:,.2f} ms"), False),
    ("Throughput b64", "throughput_batch64", _fmt(lambda v: f"{v:,.0f} img/s"), False),
    ("Model size", "model_bytes", _fmt(_bytes), False), ("Time", "seconds", SECS, False),
]
BENCH_HEADERS = ("Latency b1", "Throughput b64")
# Shown after the prune ratio when summary.csv has the budget columns (a run has --target-macs/--target-params).
BUDGET_VIEW = [("Budget", "budget", TEXT, True), ("Target", "budget_target", SI, False),
               ("Budget met", "budget_met", _fmt(lambda v: "yes" if v else "NO"), True)]
# Shown when summary.csv has the int8 columns (a run holds an int8 export); agreement is a fraction.
INT8_VIEW = [
    ("Int8 acc", "final_acc_int8", PCT, False),
    ("Int8 top-1 agreement", "agreement_int8", _fmt(lambda v: f"{100 * v:.2f} %"), False),
    ("Int8 latency b1", "latency_ms_batch1_int8", _fmt(lambda v: f"{v:,.2f} ms"), False),
    ("Int8 throughput b64", "throughput_batch64_int8", _fmt(lambda v: f"{v:,.0f} img/s"), False),
    ("Int8 size", "bytes_int8", _fmt(_bytes), False),
]


def _table(headers: Iterable[str], rows: Iterable[tuple[list[tuple[str, bool]], str]]) -> str:
    """Rows are ([(escaped cell, is text)], row class); headers are escaped here."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{cls}">' + "".join(f'<td class="{"text" if t else "num"}">{c}</td>' for c, t in cells)
                   + "</tr>" for cells, cls in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _summary(summary: pd.DataFrame) -> str:
    has_bench = summary[["latency_ms_batch1", "throughput_batch64"]].notna().any().any()
    view = [v for v in SUMMARY_VIEW if has_bench or v[0] not in BENCH_HEADERS]
    view += [v for v in INT8_VIEW if v[1] in summary.columns]
    if "budget" in summary.columns:
        at = next(i for i, v in enumerate(view) if v[1] == "prune_ratio") + 1
        view[at:at] = BUDGET_VIEW
    rows = []
    for _, r in summary.assign(stages=[f"{d}/{'?' if _missing(p) else int(p)}" for d, p in
                                       zip(summary["stages_done"], summary["stages_planned"])]).iterrows():
        cells = [(esc(fmt(r[col])), text) for _, col, fmt, text in view]
        if r["partial"]:
            cells[0] = (cells[0][0] + ' <span class="tag">partial</span>', True)
        rows.append((cells, "partial" if r["partial"] else ""))
    return _table([v[0] for v in view], rows)


def _stage_table(stages: pd.DataFrame, done: int) -> str:
    rows = []
    for stage, g in stages.groupby("stage", sort=True):
        acc = dict(zip(g["phase"], g["test_acc"]))
        first, last = g.iloc[0], g.iloc[-1]
        note = "" if stage <= done else ' <span class="tag">unfinished</span>'
        cells = [(f"{int(stage)}{note}", False), (INT(first["width_in"]), False),
                 (f"{INT(first['width_before'])} → {INT(last['width'])}", False),
                 *[(PCT(acc.get(p)), False) for p in ("trained", "pruned", "finetuned")],
                 (INT(last["params_backbone"]), False), (SI(last["macs_backbone"]), False),
                 (SECS(g["seconds"].sum()), False)]
        rows.append((cells, "" if stage <= done else "partial"))
    return _table(["Stage", "Width in", "Width before → after", "Acc trained", "Acc pruned", "Acc fine-tuned",
                   "Params (backbone)", "MACs (backbone)", "Time"], rows)


def _run_section(r: pd.Series, stages: pd.DataFrame) -> str:
    facts = [f"status {esc(r['status'])}", f"dataset {esc(TEXT(r['dataset']))}", f"device {esc(TEXT(r['device']))}",
             f"started {esc(TEXT(r['started']))}", f"MACs {esc(SI(r['macs']))}"]
    if not _missing(r["latency_ms_batch1"]):
        facts.append(f"latency {esc(f'{r.latency_ms_batch1:,.2f}')} ms at batch 1")
    if not _missing(r["throughput_batch64"]):
        facts.append(f"throughput {esc(f'{r.throughput_batch64:,.0f}')} images/s at batch 64")
    if not _missing(r.get("budget")):
        met = {True: "met", False: "NOT met"}.get(r["budget_met"], "not finished")
        facts.append(esc(f"budget {r['budget']} = {SI(r['budget_target'])}: {met} at {SI(r['budget_final'])} "
                         f"({100 * r['budget_final'] / r['budget_target']:.1f} %), chosen ratios {r['prune_ratio']}"))
    tag = ' <span class="tag">partial</span>' if r["partial"] else ""
    return (f"<section><h2>{esc(r['run'])}{tag}</h2><p>{' · '.join(facts)}</p>"
            + _stage_table(stages[stages["run"] == r["run"]], int(r["stages_done"])) + "</section>")


def _figure(p: Plot) -> str:
    data = base64.b64encode(p.svg).decode("ascii")
    return (f'<figure id="plot-{esc(p.key)}"><img alt="{esc(p.title)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption><b>{esc(p.title)}.</b> {esc(p.caption)}</figcaption></figure>")


def render_html(summary: pd.DataFrame, stages: pd.DataFrame, plots: list[Plot]) -> str:
    partial = int(summary["partial"].sum())
    notes = [f"{MACS_NOTE}; FLOPs are about twice that. Params and MACs are the backbone's (the blocks), without "
             "the auxiliary classifier; summary.csv also lists them with the last head.",
             "Accuracy is top-1 on the test split, in percent; the ensemble weighs stage j's head by 2^j."]
    if partial:
        notes.append(f"{partial} partial run(s) (stopped early or still running) are shown with their last finished "
                     "stage's numbers and the sum of their recorded phase times; they are not Pareto candidates.")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>prunegreedy report</title>",
        f"<style>{CSS}</style></head><body>", "<h1>prunegreedy report</h1>",
        f"<p>{len(summary)} run(s), generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>",
        "<h2>Summary</h2>", _summary(summary),
        "<h2>Plots</h2>", '<div class="plots">' + "".join(_figure(p) for p in plots) + "</div>",
        "<h2>Runs</h2>", *(_run_section(r, stages) for _, r in summary.iterrows()), "</body></html>",
    ]) + "\n"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of raw strings (e.g. a CSV as written), escaped; cells that read as numbers align right."""
    def is_num(c: str) -> bool:
        try:
            float(c)
        except ValueError:
            return False
        return True
    return _table(header, [([(esc(c), not is_num(c)) for c in r], "") for r in rows])
