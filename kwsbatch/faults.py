"""Hold points: named moments where a test can stop a process, to kill or signal it exactly there.

A test sets ``KWSBATCH_HOLD=<point>[#<n>]@<folder>``. The n-th time (default: the first) a
process reaches that point, it writes ``<folder>/<point>.<pid>`` and waits until
``<folder>/<point>.go`` exists; every other arrival passes straight through. Tests that kill a
worker "while a task runs" or "before the next submit" wait for the marker instead of sleeping,
so they pass on a loaded machine. Unset (always, outside tests) a hold point costs one lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_arrivals: dict[str, int] = {}  # per process: how often each point was reached


def hold(point: str) -> None:
    """Wait here when KWSBATCH_HOLD names this point and this is the arrival it counts."""
    wanted = os.environ.get("KWSBATCH_HOLD")
    if not wanted:
        return
    name, _, folder = wanted.partition("@")
    name, _, nth = name.partition("#")
    if name != point:
        return
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] != int(nth or 1):
        return
    folder = Path(folder)
    (folder / f"{point}.{os.getpid()}").write_text(str(os.getpid()))
    while not (folder / f"{point}.go").exists():
        time.sleep(0.005)
