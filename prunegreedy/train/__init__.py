"""Training mechanics for one module set: the stage loop, schedules, evaluation, modes, processes."""
