"""Stopping a run on request (SIGTERM, SIGINT) at a step boundary, with its state saved.

SIGTERM is what Slurm sends at a time limit, and Docker, Kubernetes and systemd on stop; SIGINT is
Ctrl-C. Inside the training loop either one is a request: the loop finishes the current step,
checkpoints its state and raises `Stopped`. Outside the loop (reading data, evaluating), or at a
second signal, it stops at once. `Stopped` is a KeyboardInterrupt, so whatever handles Ctrl-C
(the run's status, its resume hint) handles both.
"""
from __future__ import annotations

import contextlib
import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal; `signum` says which (EXIT_CODES maps it to the exit code)."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(where)
        self.signum, self.where = signum, where

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Requests:
    signum: int | None = None  # a stop asked for and not yet acted on
    loops: int = 0  # training loops running now (a request waits for their next step)


_state = _Requests()


def requested() -> int | None:
    """The signal a stop was requested with, or None."""
    return _state.signum


def _handler(signum, frame) -> None:
    if _state.loops and _state.signum is None:
        _state.signum = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def graceful():
    """SIGTERM and SIGINT become stop requests while inside (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _handler) for s in EXIT_CODES}
    _state.signum = None
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        _state.signum = None


@contextlib.contextmanager
def loop():
    """A training loop is running: signals wait for its next step boundary."""
    _state.loops += 1
    try:
        yield
    finally:
        _state.loops -= 1
