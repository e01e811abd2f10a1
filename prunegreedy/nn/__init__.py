"""Network pieces: stage specs, blocks, auxiliary heads, the paper's plans, the greedy net."""
