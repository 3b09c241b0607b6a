"""Config fields that carry their own help text and limits, declared once for the library and the CLI.

A ``*Config`` dataclass declares a field as ``epochs: int = setting(30, "passes over ...", at_least=1)``
and calls ``check_settings(self)`` in ``__post_init__``; the CLI builds the ``--epochs`` flag from
the same field (its default, type, help, choices and limits), so neither restates the other and a
bad value reads the same from Python (ValueError) and from the command line (a usage error).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


class SettingError(ValueError):
    """A setting out of its range; names the field, so the CLI can name its flag."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its help text and the values it accepts."""
    limits = {"choices": choices, "at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, **limits})


def check_value(name: str, metadata, value: Any) -> None:
    """Raise SettingError when value breaks the field's limits (None, the unset value, always passes)."""
    if value is None:
        return
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise SettingError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    for limit, fails, words in (
        ("at_least", lambda v, x: v < x, "at least"),
        ("above", lambda v, x: v <= x, "above"),
        ("at_most", lambda v, x: v > x, "at most"),
        ("below", lambda v, x: v >= x, "below"),
    ):
        bound = metadata.get(limit)
        if bound is not None and fails(value, bound):
            raise SettingError(name, f"must be {words} {bound:g}, got {value:g}")


def check_settings(config) -> None:
    """Check every field declared with setting()."""
    for f in dataclasses.fields(config):
        if "help" in f.metadata:
            check_value(f.name, f.metadata, getattr(config, f.name))


ONE_PER_CORE = 0  # --jobs 0: one worker per usable core


def jobs_setting() -> int:
    """The --jobs field every config that reads audio in parallel declares: one meaning, one default."""
    return setting(ONE_PER_CORE, "workers that load and decode the audio (0: one per core)", at_least=0)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(jobs: int) -> int:
    """Workers for a --jobs value: jobs itself, or one per usable core for 0."""
    return jobs or usable_cores()
