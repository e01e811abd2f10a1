"""Compression: importance criteria, pruning operations, the hooks run after each stage."""
