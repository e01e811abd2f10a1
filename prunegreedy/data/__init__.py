"""Datasets: the batching interface, cached uint8 tensors, streamed image folders, the registry by name."""
