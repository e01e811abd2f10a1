"""Measurements of a network: parameters and MACs, activation memory, linear probes."""
