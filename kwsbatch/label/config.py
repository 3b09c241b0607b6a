"""What a `label` run is asked to do: its settings, light to import (no torch, no numpy).

A cron run that finds another one writing its output stops before torch and the model load
(label/run.py), and the command line builds its flags from these fields (settings.py); both need
them without paying for the model's imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from kwsbatch.files.output import is_stream
from kwsbatch.files.windowing import WindowConfig
from kwsbatch.label.settle import DEFAULT_SETTLE_S
from kwsbatch.label.shard import Shard
from kwsbatch.settings import SettingError, check_settings, jobs_setting, setting, worker_count

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class LabelConfig:
    """How the pipeline reads and scores files; shared by label, evaluate and bench."""

    batch_size: int = setting(64, "clips (or windows) per model batch", at_least=1)
    jobs: int = jobs_setting()
    sort_window: int = 4  # batches' worth of upcoming clips sorted by length together (one task)
    max_seconds: float | None = setting(30.0, "files longer than this get an error row (without --window)", above=0)
    window: WindowConfig | None = None  # window mode: slide over each file, report detections

    def __post_init__(self):
        check_settings(self)
        if self.sort_window < 1:
            raise SettingError("sort_window", f"must be at least 1, got {self.sort_window}")

    @property
    def workers(self) -> int:
        """Loader worker processes: jobs, or one per usable core for 0."""
        return worker_count(self.jobs)

    @property
    def task_size(self) -> int:
        return self.batch_size * self.sort_window


@dataclass(frozen=True)
class LabelRequest:
    """One `kwsbatch label` run: what to label, with which model, into what; fields match its flags."""

    inputs: tuple[str, ...]
    out: str = "-"  # the output file; "-": standard output (and /dev/null, /dev/stdout, a FIFO: streams too)
    output_format: str | None = None  # None: from out's extension, else csv
    manifest_format: str | None = None  # None: from each manifest's name
    model: str | None = None  # None: the bundled model
    device: str = "auto"
    threshold: float = setting(0.0, "clips: label _unknown_ when the top probability is below P; --window: a window counts toward "
                               "a detection only when its keyword's probability is at least P", at_least=0, at_most=1, metavar="P")
    window: float | None = setting(None, "slide a window this long over each file; one row per detection (default: none)",
                                   metavar="SECONDS")
    hop: float | None = setting(None, "seconds between windows (default: half the window)", metavar="SECONDS")
    shard: str | None = setting(None, "label only shard K (0 to N-1) of N, chosen by a stable hash of each path; "
                                "join with `kwsbatch merge` (default: all)", metavar="K/N")
    force: bool = setting(False, "relabel every file, not only new or changed ones")
    wait: bool = setting(False, "when another run is writing the same output, wait for it instead of exiting with status 75")
    settle: float | None = setting(None, "with -o FILE: leave files modified less than SECONDS before the run (or during it) to the "
                                   f"next run, as they may still be being written; 0 labels them (default: $KWSBATCH_SETTLE, else "
                                   f"{DEFAULT_SETTLE_S:g})", at_least=0, metavar="SECONDS")
    dask: str | None = None  # a dask.distributed scheduler's address, or "local:N"
    config: LabelConfig = LabelConfig()  # its window comes from window and hop

    def __post_init__(self):
        check_settings(self)
        if self.to_stdout and (self.force or self.wait):
            raise SettingError("force" if self.force else "wait", "needs an output file (-o FILE)")
        if self.to_stdout and self.dask:
            raise SettingError("dask", "needs an output file (-o FILE): the driver writes it with the journal")
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.settle is None:
            object.__setattr__(self, "settle", settle_from_environment())
        elif not self.settle >= 0:  # NaN passes the field's limit
            raise SettingError("settle", f"must be 0 or more seconds, got {self.settle}")
        if self.hop is not None and self.window is None:
            raise SettingError("hop", "needs --window")
        window = None
        if self.window is not None:
            window = WindowConfig(self.window, self.hop if self.hop is not None else self.window / 2, self.threshold)
        object.__setattr__(self, "config", replace(self.config, window=window))

    @property
    def to_stdout(self) -> bool:
        """Whether rows stream (standard output, /dev/null, a FIFO...) rather than go to a journaled file."""
        return is_stream(self.out)


def settle_from_environment() -> float:
    """$KWSBATCH_SETTLE in seconds, else DEFAULT_SETTLE_S; SettingError("settle") when it is not a number of seconds."""
    text = os.environ.get("KWSBATCH_SETTLE")
    if text is None:
        return DEFAULT_SETTLE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise SettingError("settle", f"$KWSBATCH_SETTLE must be 0 or more seconds, got {text!r}")
    return seconds
