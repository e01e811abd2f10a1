"""The report's plots: matplotlib figures (Agg canvas, no pyplot state) rendered to SVG bytes.

Run names reach the figures as text, so they are escaped for mathtext: a name holding `$` must
print as written, not be parsed (or fail to parse) as a formula.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

MACS_NOTE = "MACs: multiply-accumulates counted by fvcore (one multiply-add = one MAC)"


@dataclass
class Plot:
    key: str
    title: str
    caption: str
    svg: bytes


def _label(text: str) -> str:
    return str(text).replace("$", r"\$")


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _log_scale(ax, which: str) -> None:
    """Log scale with major ticks at 1, 2, 5 x 10^n labelled short ("20k", "1M") and unlabelled minor
    ticks: matplotlib's default labels minor ticks on a narrow range, and "3x10^4 4x10^4" overlap."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(EngFormatter(sep=""))
    axis.set_minor_locator(LogLocator(subs="all"))
    axis.set_minor_formatter(NullFormatter())


def _colors(names: list[str]) -> dict[str, object]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _scatter(cost: str, axis: str) -> Callable[[pd.DataFrame, pd.DataFrame], Figure]:
    """Final accuracy against a cost, log x; Pareto front as a step line, reference as a star."""
    def plot(summary: pd.DataFrame, finals: pd.DataFrame) -> Figure:
        fig, ax = _figure()
        colors = _colors(summary["run"].tolist())
        for _, r in summary.iterrows():
            c = colors[r["run"]]
            ax.scatter([r[cost]], [r["final_acc"]], marker="*" if r["reference"] else "o",
                       s=160 if r["reference"] else 50, facecolors="none" if r["partial"] else [c],
                       edgecolors=[c], linewidths=1.5, zorder=3)
            tags = [t for t, on in (("reference", r["reference"]), ("partial", r["partial"])) if on]
            ax.annotate(_label(r["run"] + (f" ({', '.join(tags)})" if tags else "")), (r[cost], r["final_acc"]),
                        xytext=(5, 4), textcoords="offset points", fontsize=7)
        front = summary[summary[f"pareto_{cost}"]].sort_values(cost)
        ax.step(front[cost], front["final_acc"], where="post", color="black", alpha=0.5, zorder=2)
        ax.scatter(front[cost], front["final_acc"], s=140, facecolors="none", edgecolors="black", zorder=2)
        ref = summary[summary["reference"] & ~summary["partial"]]
        for acc in ref["final_acc"]:
            ax.axhline(acc, color="gray", linestyle=":", linewidth=1)
        _log_scale(ax, "x")
        ax.margins(x=0.25, y=0.15)  # room for the name labels beside the outermost points
        ax.set_xlabel(axis)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(handles=[
            Line2D([], [], color="black", alpha=0.5, marker="o", markerfacecolor="none", markersize=10,
                   label="Pareto front"),
            Line2D([], [], color="gray", linestyle=":", marker="*", markersize=10, label="reference (unpruned)"),
            Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor="gray",
                   label="partial run")], fontsize=7, loc="best")
        return fig
    return plot


def _per_stage(column: str, axis: str, log: bool) -> Callable[[pd.DataFrame, pd.DataFrame], Figure]:
    """One line per run over the stages it finished; partial runs dashed."""
    def plot(summary: pd.DataFrame, finals: pd.DataFrame) -> Figure:
        fig, ax = _figure()
        colors = _colors(summary["run"].tolist())
        lines, labels = [], []
        for name, partial in zip(summary["run"], summary["partial"]):
            rows = finals[finals["run"] == name].sort_values("stage")
            (line,) = ax.plot(rows["stage"], rows[column], marker="o", color=colors[name],
                              linestyle="--" if partial else "-")
            lines.append(line)
            labels.append(_label(name + (" (partial)" if partial else "")))
        if log:
            _log_scale(ax, "y")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("stage")
        ax.set_ylabel(axis)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(lines, labels, fontsize=7)  # explicit labels: a name starting with '_' still shows
        return fig
    return plot


# key -> (title, caption, figure factory), in report order.
PLOTS: dict[str, tuple[str, str, Callable[[pd.DataFrame, pd.DataFrame], Figure]]] = {
    "acc_vs_params": ("Accuracy vs parameters",
                      "Final test accuracy against backbone parameters (log scale). The black step line is the "
                      "Pareto front of finished runs; stars mark unpruned reference runs (prune ratio 0 or hook "
                      "none); hollow markers are partial runs.",
                      _scatter("params", "backbone parameters")),
    "acc_vs_macs": ("Accuracy vs MACs",
                    f"Final test accuracy against backbone MACs per image (log scale). {MACS_NOTE}. "
                    "Markers as in the previous plot.",
                    _scatter("macs", "backbone MACs per image")),
    "acc_per_stage": ("Accuracy per stage",
                      "Test accuracy of each stage's auxiliary classifier after its last phase: how linearly "
                      "separable the representation becomes as blocks are added.",
                      _per_stage("test_acc", "test accuracy (%)", log=False)),
    "params_per_stage": ("Parameters per stage", "Backbone parameters after each stage (log scale).",
                         _per_stage("params_backbone", "backbone parameters", log=True)),
    "macs_per_stage": ("MACs per stage", f"Backbone MACs per image after each stage (log scale). {MACS_NOTE}.",
                       _per_stage("macs_backbone", "backbone MACs per image", log=True)),
    "time_per_stage": ("Time per stage", "Seconds spent on each stage: training, pruning and fine-tuning.",
                       _per_stage("stage_seconds", "seconds", log=False)),
}


def to_svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # Glyphs as paths: the SVG needs no fonts; fixed hash salt and no date: the same runs give the same bytes.
    with rc_context({"svg.fonttype": "path", "svg.hashsalt": "prunegreedy"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


SENSITIVITY_CAPTION = ("Held-out accuracy of each stage's auxiliary head with a copy of the stage's new block pruned "
                       "at each ratio, before any fine-tuning (images held out of training; test data is never "
                       "used). Stars: the ratio the run's budget chose for the stage.")


def _sensitivity_figure(sens: pd.DataFrame, chosen: dict[int, float]) -> Figure:
    import numpy as np

    fig, ax = _figure()
    lines, labels = [], []
    for stage, g in sens.sort_values(["stage", "ratio"]).groupby("stage", sort=True):
        (line,) = ax.plot(g["ratio"], g["holdout_acc"], marker="o", markersize=4)
        lines.append(line)
        labels.append(f"stage {int(stage)}")
        if int(stage) in chosen:
            r = chosen[int(stage)]
            ax.scatter([r], [np.interp(r, g["ratio"], g["holdout_acc"])], marker="*", s=180, zorder=3,
                       color=line.get_color(), edgecolors="black", linewidths=0.6)
    ax.set_xlabel("prune ratio of the stage's block")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(lines, labels, fontsize=7)
    return fig


def sensitivity_plots(runs: list[tuple[str, pd.DataFrame | None, dict[int, float]]]) -> list[Plot]:
    """One plot per run that has sensitivity.csv: accuracy against ratio, a curve per stage."""
    return [Plot(f"sensitivity-{i}", f"Sensitivity: {name}", SENSITIVITY_CAPTION,
                 to_svg(_sensitivity_figure(sens, chosen)))
            for i, (name, sens, chosen) in enumerate(runs) if sens is not None and len(sens)]


def render_plots(summary: pd.DataFrame, finals: pd.DataFrame) -> list[Plot]:
    return [Plot(key, title, caption, to_svg(make(summary, finals))) for key, (title, caption, make) in PLOTS.items()]
