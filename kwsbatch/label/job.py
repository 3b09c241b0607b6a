"""A `label` run into a file, safe to start from cron: locked, journaled, incremental, atomic.

0. Resolve out once (a symbolic link names the file to write) and check that every path the run
   needs beside it (lock, journal) is free or a regular file: one error line otherwise.
1. Lock ``<out>.lock``; when another run holds it, fail at once (or wait with ``wait=True``).
2. Open ``<out>.journal``, resuming the journal a killed run left when its settings match.
3. Import the previous output's rows once per journal (not with ``force``); rows of another model,
   and error rows, are left out, so those files are labelled again.
4. Walk the inputs lazily. A file whose path, size and mtime match a known result is skipped; a
   file modified within ``settle_s`` of the run is left for the next run (deferred); the others go
   through the pipeline, and each finished task is committed to the journal.
5. Write the output from the journal, in input order, to a temporary file that is fsynced and
   renamed over ``out``; then delete the journal.

Killing the process at any point loses at most the tasks in flight: the next run finds the rest
in the journal, and the previous output is never touched before the final rename.
"""

from __future__ import annotations

import csv
import itertools
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kwsbatch.errors import KwsError
from kwsbatch.faults import hold
from kwsbatch.files.atomic import remove_stale_temporaries
from kwsbatch.files.audio import file_kind
from kwsbatch.files.lock import lock_path, output_lock
from kwsbatch.files.manifest import ManifestRow, check_inputs_exist, iter_inputs
from kwsbatch.files.output import (
    ADDED_COLUMNS,
    OutputPaths,
    iter_label_output,
    label_output_header,
    open_stream,
    resolve_output,
    write_label_rows,
)
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.journal import Journal, file_identity, journal_path, remove_journal
from kwsbatch.label.pipeline import Score
from kwsbatch.label.rows import FILE_COLUMNS, Key, OutputColumns, RowLayout, output_row_key, row_key
from kwsbatch.label.settle import Settle
from kwsbatch.label.shard import Shard, select_shard
from kwsbatch.progress import Reporter

COMMIT_EVERY = 20_000  # input rows recorded between commits while files are only being skipped


@dataclass
class JobSummary:
    out: str
    labelled: int = 0  # files labelled by this run: new, changed, or failed last time
    unchanged: int = 0  # files skipped because the previous output has their rows
    resumed: int = 0  # files skipped because an interrupted run had labelled them
    deferred: int = 0  # files left for the next run: modified within settle_s of this one
    settle_s: float = 0.0
    failed: int = 0  # files in the output whose row carries an error
    rows: int = 0  # rows written
    seconds: float = 0.0
    peak_rss: int | None = None  # bytes, the process's high-water mark when the run ended

    @property
    def files_per_second(self) -> float:
        return self.labelled / max(self.seconds, 1e-9)

    def line(self) -> str:
        parts = [f"labelled {self.labelled:,} new or changed files ({self.failed:,} failed)"]
        parts.append(f"skipped {self.unchanged:,} unchanged")
        if self.resumed:
            parts.append(f"resumed {self.resumed:,} from an interrupted run")
        if self.deferred:
            parts.append(f"deferred {self.deferred:,} modified in the last {self.settle_s:g} s to the next run")
        memory = f", peak RSS {self.peak_rss / 2**20:,.0f} MiB" if self.peak_rss else ""
        return (
            ", ".join(parts)
            + f"; {self.rows:,} rows in {self.seconds:.2f} s, {self.files_per_second:,.0f} files/s{memory} -> {self.out}"
        )


def peak_rss() -> int | None:
    """The process's peak resident memory in bytes (Linux), or None.

    VmHWM rather than getrusage's ru_maxrss: a child started by fork + exec inherits its parent's
    high-water mark in ru_maxrss, so a small `label` run from a big parent would report the parent's.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_label_job(
    score: Score,
    layout: RowLayout,
    inputs: list[str],
    out: str | os.PathLike,
    config: LabelConfig,
    *,
    output_format: str = "csv",
    manifest_format: str | None = None,
    force: bool = False,
    wait: bool = False,
    settle_s: float = 0.0,
    shard: Shard | None = None,
    reporter: Reporter | None = None,
) -> JobSummary:
    """Label inputs into out (csv, jsonl or parquet), keeping the rows of files unchanged since the previous run.

    score turns rows into (task, results): pipeline.score_files with a scorer, or
    cluster.score_on_cluster on Dask. With a shard, only the inputs it holds: the output then has
    that shard's rows alone. Files modified less than settle_s before the run started, or since,
    are deferred to the next run (a file still being written); a deferred file keeps the row it
    had, if any.
    """
    reporter = reporter or Reporter()
    check_inputs_exist(inputs)
    out = resolve_output(out)
    check_run_files(out)
    columns = OutputColumns(layout, inputs, config.window is not None, manifest_format, output_format)
    summary = JobSummary(out=str(out), settle_s=settle_s)
    with output_lock(out, wait=wait, on_wait=reporter.log):
        started = time.perf_counter()
        remove_stale_temporaries(out)  # half-written outputs of killed runs: ours to clean, under the lock
        importable = not force and _check_previous(out, output_format, columns, reporter)
        journal = Journal.open(journal_path(out), _journal_settings(layout, columns, config), out)
        try:
            if journal.resumed:
                reporter.log(f"resuming an interrupted run: {journal.labelled_count():,} files already labelled")
            if force:
                journal.forget_imported()
            elif not journal.imported:
                journal.import_previous(_previous_results(out, output_format, columns, layout.model_id) if importable else ())
            # No shard in the journal's settings: the output is built from this attempt's inputs
            # only, so results cached for another shard's files are never written.
            settle = Settle(settle_s)
            hold("scan")
            rows = select_shard(iter_inputs(inputs, manifest_format=manifest_format), shard)
            _label_new_files(score, rows, _keys(OutputPaths(out.parent)), journal, config, columns, settle, summary, reporter)
            _write_output(out, output_format, journal, columns, summary)
        except sqlite3.Error as e:  # the journal's disk filled up (or it broke) mid-run
            journal.close()
            raise KwsError(
                f"{journal.path}: cannot record results ({e}); {out} is unchanged: free space and run the same command again"
            ) from None
        except BaseException:  # an error or Ctrl-C: keep the journal only when it holds files to resume
            _close_journal(journal, keep=_labelled_any(journal))
            raise
        _close_journal(journal, keep=False)
        summary.seconds = time.perf_counter() - started
    summary.peak_rss = peak_rss()
    return summary


def _labelled_any(journal: Journal) -> bool:
    try:
        return journal.labelled_count() > 0
    except sqlite3.Error:
        return True  # cannot tell: keep what may be there


def _close_journal(journal: Journal, *, keep: bool) -> None:
    journal.close()
    if not keep:
        remove_journal(journal.path)


def _journal_settings(layout: RowLayout, columns: OutputColumns, config: LabelConfig) -> dict:
    """What a journal's results depend on: a killed run's journal is resumed only under the same."""
    window = [config.window.window_s, config.window.hop_s, config.window.threshold] if config.window is not None else None
    return {"model": layout.model_id, "columns": columns.own, "max_seconds": config.max_seconds, "window": window, "threshold": layout.threshold}


def check_run_files(out: Path) -> None:
    """One error line when out, or a path the run keeps beside it, is taken by something that is not a regular file.

    The lock, the journal and its -wal and -shm files are opened by name: a folder, FIFO, device
    or symbolic link there would make them fail with a traceback, block, or write elsewhere.
    """
    try:
        kind = os.stat(out).st_mode
    except OSError:
        kind = stat.S_IFREG  # absent (written at the end), or unreachable (the lock says why)
    if stat.S_ISDIR(kind):
        raise KwsError(f"{out}: is a folder; -o takes the path of the CSV file to write")
    if not stat.S_ISREG(kind):
        raise KwsError(f"{out}: is {file_kind(kind)}; -o takes a regular file, or a FIFO or character device to stream to")
    journal = journal_path(out)
    beside = [(lock_path(out), "lock file"), *((Path(f"{journal}{suffix}"), "journal") for suffix in ("", "-wal", "-shm"))]
    for path, what in beside:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # absent: created when needed, where an unusable folder is its own clear error
        if not stat.S_ISREG(mode):
            found = "a symbolic link" if stat.S_ISLNK(mode) else file_kind(mode)
            raise KwsError(f"{path}: is {found}, where this run keeps its {what}; move it away and run again")


def _keys(paths: OutputPaths) -> Callable[[ManifestRow], Key]:
    """A row's key: its file's path as the output names it (relative to the output's folder), and its segment."""
    return lambda row: row_key(row, paths(row.path, row.audio_path))


def _label_new_files(
    score: Score,
    rows: Iterable[ManifestRow],
    key_of: Callable[[ManifestRow], Key],
    journal: Journal,
    config: LabelConfig,
    columns: OutputColumns,
    settle: Settle,
    summary: JobSummary,
    reporter: Reporter,
) -> None:
    identities: dict[Key, tuple[int, int] | None] = {}  # files in flight only
    reporter.start("labelling", None)
    try:
        for task, results in score(_new_files(rows, key_of, journal, columns, settle, identities, summary, reporter), config):
            keys = [key_of(row) for row in task]
            journal.record((k, identities.pop(k), columns.result_values(r)) for k, r in zip(keys, results))
            summary.labelled += len(task)
            summary.failed += sum(bool(r.error) for r in results)
            reporter.advance(len(task), skipped=f"{summary.unchanged + summary.resumed:,}", failed=f"{summary.failed:,}")
    finally:
        reporter.stop()
        journal.commit()


def _new_files(
    rows: Iterable[ManifestRow],
    key_of: Callable[[ManifestRow], Key],
    journal: Journal,
    columns: OutputColumns,
    settle: Settle,
    identities: dict,
    summary: JobSummary,
    reporter: Reporter,
) -> Iterator[ManifestRow]:
    """Record every input row, yielding only the files that have no result for their current state.

    A file too fresh to label (settle) is recorded only when it has an earlier row to keep.
    """
    for n, row in enumerate(rows, 1):
        if n % COMMIT_EVERY == 0:
            journal.commit()
            reporter.advance(0, skipped=f"{summary.unchanged + summary.resumed:,}", failed=f"{summary.failed:,}")
        key = key_of(row)
        audio_path = os.path.abspath(row.audio_path)  # two manifests' same relative name are two files
        identity = None if row.error else file_identity(row.audio_path)
        if settle.fresh(identity):
            summary.deferred += 1
            if journal.has_result(key):  # it keeps its row, whose size and mtime make the next run relabel it
                journal.add_input(key, audio_path, row.source, columns.input_values(row))
            continue
        if not journal.add_input(key, audio_path, row.source, columns.input_values(row)):
            continue  # the same path given twice: one row
        known = journal.lookup(key, identity)
        if known is None:
            identities[key] = identity
            yield row
        elif known == "previous":
            summary.unchanged += 1
        else:
            summary.resumed += 1


def _check_previous(out: Path, output_format: str, columns: OutputColumns, reporter: Reporter) -> bool:
    """Whether out holds rows this run can keep; refuse to replace a file that is not a label output."""
    if not out.exists():
        return False
    try:
        header = label_output_header(out, output_format)
    except (OSError, UnicodeDecodeError, csv.Error, KwsError) as e:
        raise KwsError(f"{out}: cannot read the previous output ({e}); move it away, or use --force to overwrite it") from None
    if not {"path", "model", "error"} <= set(header):
        raise KwsError(
            f"{out}: exists and is not the output of `kwsbatch label`; refusing to replace it "
            "(move it away, or use --force to overwrite it)"
        )
    missing = [c for c in (*columns.results, *FILE_COLUMNS) if c not in header and c not in ADDED_COLUMNS]
    if missing:
        reporter.warn(f"{out} was written with other settings or another model (no {missing[0]} column): relabelling every file")
    return not missing


def _previous_results(out: Path, output_format: str, columns: OutputColumns, model_id: str) -> Iterator[tuple[Key, int, int, list[list]]]:
    """(key, size, mtime_ns, rows) of the previous output's files that this model labelled without error."""
    try:
        # Window mode writes a file's detections on consecutive rows.
        for key, group in itertools.groupby(iter_label_output(out, output_format), key=output_row_key):
            group = list(group)
            first = group[0]
            if first["model"] != model_id or any(r["error"] for r in group):
                continue
            try:
                size, mtime_ns = int(first["file_size"]), int(first["file_mtime_ns"])
            except (TypeError, ValueError):
                continue
            yield key, size, mtime_ns, [[r.get(c, "") for c in columns.results] for r in group]
    except (UnicodeDecodeError, csv.Error) as e:
        raise KwsError(f"{out}: cannot read the previous output ({e}); move it away, or use --force to overwrite it") from None


def _write_output(out: Path, output_format: str, journal: Journal, columns: OutputColumns, summary: JobSummary) -> None:
    """Write the journal's rows to out atomically."""
    try:
        write_label_rows(_output_values(journal, columns, summary), out, columns.written, columns.types, output_format=output_format)
    except OSError as e:  # a full disk or a read-only folder: the rename never happened
        raise KwsError(
            f"{out}: cannot write the output ({e.strerror or e}); the previous {out.name} is unchanged "
            f"and labelled files are kept in {journal.path}: fix that and run the same command again"
        ) from None


def _output_values(journal: Journal, columns: OutputColumns, summary: JobSummary) -> Iterator[list]:
    error = columns.results.index("error")
    summary.failed = 0
    for path, extras, identity, rows in journal.output():
        size, mtime_ns = identity or ("", "")
        for values in rows:
            yield [path, *values, size, mtime_ns, *extras]
        summary.rows += len(rows)
        summary.failed += bool(rows[0][error])


def stream_labels(
    score: Score,
    layout: RowLayout,
    inputs: list[str],
    config: LabelConfig,
    *,
    output_format: str = "csv",
    manifest_format: str | None = None,
    out: str = "-",
    shard: Shard | None = None,
    reporter: Reporter | None = None,
) -> JobSummary:
    """Label inputs to a CSV or JSON-lines stream, in input order, one row per input row: no lock, journal or skipping.

    out is '-' (standard output), or what files/output.py's is_stream takes for a stream (/dev/null,
    /dev/stdout, a FIFO): no lock, journal or temporary file is ever made beside those.
    """
    reporter = reporter or Reporter()
    check_inputs_exist(inputs)
    columns = OutputColumns(layout, inputs, config.window is not None, manifest_format, output_format)
    summary = JobSummary(out="standard output" if out == "-" else out)
    started = time.perf_counter()
    rows = select_shard(iter_inputs(inputs, manifest_format=manifest_format), shard)
    paths = OutputPaths(os.curdir)  # where a stream (a redirected standard output, a FIFO's reader) most likely lands
    with open_stream(out, output_format) as f:
        reporter.start("labelling", None)
        try:
            scored = _scored_rows(score, rows, paths, config, columns, summary, reporter)
            write_label_rows(scored, f, columns.written, columns.types, output_format=output_format)
        finally:
            reporter.stop()
    summary.seconds = time.perf_counter() - started
    summary.peak_rss = peak_rss()
    return summary


def _scored_rows(score: Score, rows: Iterable[ManifestRow], paths: OutputPaths, config: LabelConfig, columns: OutputColumns,
                 summary: JobSummary, reporter: Reporter) -> Iterator[list]:
    """Each input row's output rows as value lists, in input order, as the tasks finish."""
    for task, results in score(rows, config, ordered=True):
        for row, result in zip(task, results):
            size, mtime_ns = (None if row.error else file_identity(row.audio_path)) or ("", "")
            values = columns.result_values(result)
            for result_values in values:
                yield [paths(row.path, row.audio_path), *result_values, size, mtime_ns, *columns.input_values(row)]
            summary.rows += len(values)
        summary.labelled += len(task)
        summary.failed += sum(bool(r.error) for r in results)
        reporter.advance(len(task), failed=f"{summary.failed:,}")
