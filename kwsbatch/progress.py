"""Progress display: the one module that draws bars, and the console tables print on. Library code reports through these hooks."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Off a terminal there is no window to fit: rich would squeeze a table into 80 columns (or
# $COLUMNS) and cut class names to "_si…", so piped tables print at their natural width instead.
_UNBOUNDED_WIDTH = 100_000


def table_console(*, stderr: bool = False) -> Console:
    """A console for tables and reports: the terminal's width, or off a terminal (piped, captured) no limit."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=_UNBOUNDED_WIDTH)


class Reporter:
    """Silent hooks; the CLI passes a RichReporter. Library functions accept either."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None: ...

    def advance(self, n: int = 1, **fields) -> None: ...

    def stop(self) -> None: ...

    def log(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def record(self, message: str) -> None: ...


class RichReporter(Reporter):
    """A rich progress bar with a rate column, plus log lines printed above it (to stderr).

    With unit="bytes" the counts and rate are shown as sizes (MB, MB/s), for downloads.
    """

    def __init__(self, console: Console | None = None, *, unit: str = "files", quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.unit = unit
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None
        self._started = 0.0
        self.done = 0
        self.log_file: str | None = None  # --log: summaries, warnings and errors appended here, for cron

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """completed: work already done before this run (a resumed download), not counted in the rate."""
        self.stop()
        self.done = 0
        self._started = time.perf_counter()
        # Off a terminal a transient bar shows nothing and leaves a blank line in the log at stop.
        if self.quiet or not self.console.is_terminal:
            return
        if self.unit == "bytes":
            counts = (DownloadColumn(), TransferSpeedColumn())
        else:
            counts = (MofNCompleteColumn(), TextColumn("{task.fields[rate]} {task.fields[unit]}/s"))
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *counts,
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, rate="-", unit=self.unit, status="")

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        if self._progress is None:
            return
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        status = "  ".join(f"{k} {v}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, rate=f"{self.done / elapsed:,.0f}", status=status)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", highlight=False, markup=False, soft_wrap=True)
        self.record(f"warning: {message}")

    def record(self, message: str) -> None:
        """Append a timestamped line to the log file, when there is one."""
        if self.log_file:
            # backslashreplace: a message may name a file whose name is not UTF-8
            with open(self.log_file, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
