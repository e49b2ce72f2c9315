"""Ctrl-C and SIGTERM become KeyboardInterrupt, but never in the middle of writing a record."""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupts:
    """Install with ``with Interrupts() as guard:``; wrap writes in ``with guard.deferred():``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._deferring = 0
        self._pending: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self._deferring:
            self._pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferred(self):
        """A signal arriving inside is raised when the block ends."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending is not None:
            signum, self._pending = self._pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)
