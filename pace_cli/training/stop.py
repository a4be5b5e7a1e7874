"""Stopping a run cleanly: a request to stop at the next step boundary, and what makes one.

SIGINT and SIGTERM (while :func:`stop_on_signals` is active) and code such as a test or a
sweep request a stop; the training loop saves a checkpoint at its next step boundary and
raises :class:`TrainingInterrupted`, whose exit code is 128 + the signal's number, as a shell
reports a process killed by that signal.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from pace_cli.errors import PaceError


class TrainingInterrupted(PaceError):
    """Raised after a signal stopped training and its checkpoint was saved."""


class StopRequest:
    """Whether a stop was requested, and by which signal (None: by code, not a signal).

    Safe to request from a signal handler or another thread. ``StopRequest(event)`` shares an
    existing :class:`threading.Event`: setting that event requests a stop.
    """

    def __init__(self, event: threading.Event | None = None):
        self._event = event if event is not None else threading.Event()
        self.signum: int | None = None

    def request(self, signum: int | None = None) -> None:
        if signum is not None:
            self.signum = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def exit_code(self, default_signal: int = signal.SIGINT) -> int:
        """128 + the signal that asked; ``default_signal`` stands in for a stop requested by code."""
        return 128 + int(self.signum if self.signum is not None else default_signal)

    @classmethod
    def of(cls, stop: StopRequest | threading.Event | None) -> StopRequest:
        """``stop`` as a StopRequest: itself, a plain event wrapped, or a fresh request."""
        if isinstance(stop, StopRequest):
            return stop
        return cls(stop)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT/SIGTERM request ``stop`` until the block ends; the handlers found before are put back.

    Outside the main thread Python cannot install handlers; there only code can request a stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop.request(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
