"""Collect the benchmark results in reports/benchmarks/ into one self-contained index.html.

Every `<name>.csv` there (one per benchmark, as its script printed it) becomes a section: the
name, the lines of `<name>.txt` if present (the command, the machine state, the summary line),
and the table, cells as written. A subfolder holding a `report.html` (e.g. accuracy-runs/, made
by `prunegreedy report`) is linked. Same CSS and escaping as the run report, so a file name or
cell cannot inject markup.

    python benchmarks/collect.py [--dir reports/benchmarks]
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from prunegreedy.fileio import write_text
from prunegreedy.report.html import CSS
from prunegreedy.report.html import esc
from prunegreedy.report.html import text_table


def section(path: Path) -> str:
    rows = list(csv.reader(path.read_text().splitlines()))
    notes = path.with_suffix(".txt")
    parts = [f'<section id="{esc(path.stem)}"><h2>{esc(path.stem)}</h2>',
             f'<p><a href="{esc(path.name)}">{esc(path.name)}</a></p>']
    if notes.exists():
        parts.append(f"<pre>{esc(notes.read_text().strip())}</pre>")
    parts.append(text_table(rows[0], rows[1:]) if rows else "<p>(empty)</p>")
    return "".join(parts) + "</section>"


def render(folder: Path) -> str:
    """The index page of a benchmark folder; raises SystemExit if it holds no CSV."""
    csvs = sorted(folder.glob("*.csv"))
    if not csvs:
        raise SystemExit(f"{folder}: no benchmark CSV files")
    reports = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/report.html"))
    links = "".join(f'<li>run report: <a href="{esc(r)}">{esc(r)}</a></li>' for r in reports)
    toc = "".join(f'<li><a href="#{esc(p.stem)}">{esc(p.stem)}</a></li>' for p in csvs)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>prunegreedy benchmarks</title>",
        f"<style>{CSS} pre {{ white-space: pre-wrap; background: #f7f7f7; padding: .5em; }}</style></head><body>",
        "<h1>prunegreedy benchmarks</h1>",
        f"<p>{len(csvs)} benchmark(s) from {esc(folder)}, collected {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        f"<ul>{toc}{links}</ul>", *(section(p) for p in csvs), "</body></html>",
    ]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("reports/benchmarks"))
    args = ap.parse_args()
    write_text(args.dir / "index.html", render(args.dir))
    print(args.dir / "index.html")


if __name__ == "__main__":
    main()
