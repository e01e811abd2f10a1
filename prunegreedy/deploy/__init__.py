"""Deployment: BN folding, export formats, the pickle-free backbone loader, exported-model runtime, latency."""
