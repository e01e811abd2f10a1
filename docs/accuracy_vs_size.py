"""Render docs/accuracy-vs-size.png from the committed sweep records, with the report's own plot.

    python docs/accuracy_vs_size.py     (from the repository root)

Reads reports/cifar10-cpu-sweep/summary.csv (written by `prunegreedy sweep`), draws the report's
"Accuracy vs parameters" figure (prunegreedy.report.plots) and saves it as a PNG.
"""
from pathlib import Path

import pandas as pd

from prunegreedy.report.plots import PLOTS

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "reports" / "cifar10-cpu-sweep"
OUT = ROOT / "docs" / "accuracy-vs-size.png"


def main() -> None:
    summary = pd.read_csv(SWEEP / "summary.csv")
    finals = pd.read_csv(SWEEP / "stages.csv")  # not used by this figure; the plot functions take both
    title, _, make = PLOTS["acc_vs_params"]
    fig = make(summary, finals)
    fig.axes[0].set_title("CIFAR-10, pruned after every stage at ratios 0, 0.25, 0.5, 0.75", fontsize=9)
    fig.savefig(OUT, format="png", dpi=120, metadata={"Software": None})
    print(f"{title}: {OUT}")


if __name__ == "__main__":
    main()
