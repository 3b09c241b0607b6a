"""SIGTERM, what cron and systemd timeouts send: a run stops as it stops on Ctrl-C.

The CLI runs each command under stop_on_sigterm(): SIGTERM then raises Terminated (a
KeyboardInterrupt) in the main thread, so every path that stops cleanly on Ctrl-C (label keeps
its journal and says how to finish) stops on it too, and the CLI exits with 143. Loader workers
keep their own SIGTERM handling (files/loader.py); systemd signals every process of a run, so a
worker may die of it before the run handles its own, and `terminating()` tells the run that the
error it got is that SIGTERM's doing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread; its message, when a run gives one, says what was kept. The CLI exits 143."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run is already stopping: a second one must not cut that short
    _received.set()
    raise Terminated


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated in the main thread (elsewhere: nothing changes)."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminating() -> bool:
    """Whether SIGTERM arrived since stop_on_sigterm() began."""
    return _received.is_set()
