"""Compression: importance criteria, pruning operations (the paper's blocks, and any stage through the
dependency graph), the hooks run after each stage."""
