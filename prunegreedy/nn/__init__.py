"""Network pieces: stage specs, blocks, auxiliary heads, the paper's plans, the greedy net; whole
networks by name (models) and any sequential network cut into stages (split)."""
