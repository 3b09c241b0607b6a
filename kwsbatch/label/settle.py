"""Files still being written: which ones a run leaves to the next (label --settle).

A file modified less than ``settle_s`` before the run started, or at any moment since, may be
half written (a recorder still recording, a copy under way): a cron run defers it, and the next
run labels it once it has settled. The default, DEFAULT_SETTLE_S: writers touch a file's mtime
with every write, at least every second or two while they work, and 10 s also covers a network
copy that stalls for a few seconds; a deferred file only waits for the next run. Files whose
mtime is more than settle_s in the future are taken as settled: that is a skewed clock (a file
server's, or a camera's), not a writer, and such files would otherwise never be labelled.

Light to import (no torch, no numpy): the command line shows the default in --settle's help.
"""

from __future__ import annotations

import time

DEFAULT_SETTLE_S = 10.0


class Settle:
    """Tells fresh files (modified within settle_s of the run) from settled ones; settle_s 0 defers nothing."""

    def __init__(self, settle_s: float):
        self.window_ns = round(settle_s * 1e9)
        self.since_ns = time.time_ns() - self.window_ns

    def fresh(self, identity: tuple[int, int] | None) -> bool:
        """Whether a file of this (size, mtime_ns) is to be left for the next run."""
        return bool(self.window_ns) and identity is not None and self.since_ns < identity[1] < time.time_ns() + self.window_ns
