"""prunegreedy: greedy layerwise CNN training (Belilovsky et al., 2019) with compression after every stage."""

__version__ = "0.1.0"
