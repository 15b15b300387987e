"""Ctrl-C (or SIGTERM, what `kill` and job schedulers send) during training: the first one is
deferred to the end of the current step (so a checkpoint of a whole step can be written), a
second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredInterrupt:
    """Context manager: while active, SIGINT and SIGTERM set `requested` instead of raising;
    a second one raises KeyboardInterrupt.

    Only the main thread can own signal handlers; elsewhere it does nothing and Ctrl-C
    raises KeyboardInterrupt wherever it lands, as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = True

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous = {}

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()
