"""Stop signals as interrupts: SIGTERM and SIGHUP end a command the way Ctrl-C does, cleanup included."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from common.errors import StopSignal

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, `docker stop`, a batch scheduler) and SIGHUP (a closed terminal) clean up like
    Ctrl-C: each becomes a `StopSignal` (a KeyboardInterrupt) in the main thread, so the partial files
    every writer removes on Ctrl-C are removed for them too, instead of the process dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise StopSignal(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
