"""Whole runs by name (`train.trainer`): greedy, end-to-end; they call train/, compress/ and records."""
