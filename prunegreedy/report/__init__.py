"""Reports: tables of runs (pandas), plots (matplotlib), the self-contained HTML page."""
