"""A `label` run into a file, safe to start from cron: locked, journaled, incremental, atomic.

1. Lock ``<out>.lock``; when another run holds it, fail at once (or wait with ``wait=True``).
2. Open ``<out>.journal``, resuming the journal a killed run left when its settings match.
3. Import the previous output's rows once per journal (not with ``force``); rows of another model,
   and error rows, are left out, so those files are labelled again.
4. Walk the inputs lazily. A file whose path, size and mtime match a known result is skipped; the
   others go through the pipeline, and each finished task is committed to the journal.
5. Write the output from the journal, in input order, to a temporary file that is fsynced and
   renamed over ``out``; then delete the journal.

Killing the process at any point loses at most the tasks in flight: the next run finds the rest
in the journal, and the previous output is never touched before the final rename.
"""

from __future__ import annotations

import csv
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kwsbatch.atomic import atomic_write, remove_stale_temporaries
from kwsbatch.errors import KwsError
from kwsbatch.journal import Journal, file_identity, journal_path, remove_journal
from kwsbatch.label import FILE_COLUMNS, Labeler
from kwsbatch.lock import output_lock
from kwsbatch.manifest import ManifestRow, input_extra_columns, iter_inputs
from kwsbatch.pipeline import LabelConfig, score_files
from kwsbatch.progress import Reporter

COMMIT_EVERY = 20_000  # input rows recorded between commits while files are only being skipped


@dataclass
class JobSummary:
    out: str
    labelled: int = 0  # files labelled by this run: new, changed, or failed last time
    unchanged: int = 0  # files skipped because the previous output has their rows
    resumed: int = 0  # files skipped because an interrupted run had labelled them
    failed: int = 0  # files in the output whose row carries an error
    rows: int = 0  # rows written
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        return self.labelled / max(self.seconds, 1e-9)

    def line(self) -> str:
        parts = [f"labelled {self.labelled:,} new or changed files ({self.failed:,} failed)"]
        parts.append(f"skipped {self.unchanged:,} unchanged")
        if self.resumed:
            parts.append(f"resumed {self.resumed:,} from an interrupted run")
        return (
            ", ".join(parts)
            + f"; {self.rows:,} rows in {self.seconds:.1f} s, {self.files_per_second:,.0f} files/s -> {self.out}"
        )


def run_label_job(
    labeler: Labeler,
    inputs: list[str],
    out: str | os.PathLike,
    config: LabelConfig,
    *,
    force: bool = False,
    wait: bool = False,
    reporter: Reporter | None = None,
) -> JobSummary:
    """Label inputs into out, keeping the rows of files unchanged since the previous run."""
    reporter = reporter or Reporter()
    out = Path(out)
    windowed = config.window is not None
    own_columns = labeler.columns(windowed=windowed)
    columns = labeler.columns(input_extra_columns(inputs), windowed=windowed, file_columns=True)
    summary = JobSummary(out=str(out))
    with output_lock(out, wait=wait):
        started = time.perf_counter()
        remove_stale_temporaries(out)  # half-written outputs of killed runs: ours to clean, under the lock
        settings = {
            "model": labeler.model_id,
            "columns": own_columns,
            "max_seconds": config.max_seconds,
            "window": [config.window.window_s, config.window.hop_s] if windowed else None,
        }
        journal = Journal.open(journal_path(out), settings, out)
        try:
            if journal.resumed:
                reporter.log(f"resuming an interrupted run: {journal.labelled_count():,} files already labelled")
            if force:
                journal.forget_imported()
            elif not journal.imported:
                journal.import_previous(_previous_results(out, own_columns, labeler.model_id, reporter))
            _label_new_files(labeler, iter_inputs(inputs), journal, config, summary, reporter)
            with atomic_write(out, "w", newline="", encoding="utf-8") as f:
                _write_output(f, journal, columns, summary)
        finally:
            journal.close()
        remove_journal(journal.path)
        summary.seconds = time.perf_counter() - started
    return summary


def _label_new_files(
    labeler: Labeler, rows: Iterable[ManifestRow], journal: Journal, config: LabelConfig, summary: JobSummary, reporter: Reporter
) -> None:
    identities: dict[str, tuple[int, int] | None] = {}  # files in flight only
    reporter.start("labelling", None)
    try:
        for task, results in score_files(labeler, _new_files(labeler, rows, journal, identities, summary), config):
            journal.record((row.path, identities.pop(row.path), labeler.result_fields(r)) for row, r in zip(task, results))
            summary.labelled += len(task)
            summary.failed += sum(bool(r.error) for r in results)
            reporter.advance(len(task), skipped=f"{summary.unchanged + summary.resumed:,}", failed=f"{summary.failed:,}")
    finally:
        reporter.stop()
        journal.commit()


def _new_files(
    labeler: Labeler, rows: Iterable[ManifestRow], journal: Journal, identities: dict, summary: JobSummary
) -> Iterator[ManifestRow]:
    """Record every input row, yielding only the files that have no result for their current state."""
    for n, row in enumerate(rows, 1):
        if n % COMMIT_EVERY == 0:
            journal.commit()
        if not journal.add_input(row.path, str(row.audio_path), row.source, labeler.input_fields(row)):
            continue  # the same path given twice: one row
        identity = None if row.error else file_identity(row.audio_path)
        known = journal.lookup(row.path, identity)
        if known is None:
            identities[row.path] = identity
            yield row
        elif known == "previous":
            summary.unchanged += 1
        else:
            summary.resumed += 1


def _previous_results(
    out: Path, own_columns: list[str], model_id: str, reporter: Reporter
) -> Iterator[tuple[str, int, int, list[dict]]]:
    """(path, size, mtime_ns, rows) of the previous output's files that this model labelled without error."""
    if not out.exists():
        return
    result_columns = [c for c in own_columns if c != "path"]
    try:
        with open(out, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if not {"path", "model", "error"} <= set(header):
                raise KwsError(
                    f"{out}: exists and is not the output of `kwsbatch label`; refusing to replace it "
                    "(move it away, or use --force to overwrite it)"
                )
            missing = [c for c in (*result_columns, *FILE_COLUMNS) if c not in header]
            if missing:
                reporter.warn(f"{out} was written with other settings or another model (no {missing[0]} column): relabelling every file")
                return
            # Window mode writes a file's detections on consecutive rows.
            for path, group in itertools.groupby(reader, key=lambda r: r["path"]):
                group = list(group)
                first = group[0]
                if first["model"] != model_id or any(r["error"] for r in group):
                    continue
                try:
                    size, mtime_ns = int(first["file_size"]), int(first["file_mtime_ns"])
                except (TypeError, ValueError):
                    continue
                yield path, size, mtime_ns, [{c: r[c] for c in result_columns} for r in group]
    except (UnicodeDecodeError, csv.Error) as e:
        raise KwsError(f"{out}: cannot read the previous output ({e}); move it away, or use --force to overwrite it") from None


def _write_output(f: TextIO, journal: Journal, columns: list[str], summary: JobSummary) -> None:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
    writer.writeheader()
    summary.failed = 0
    for fields, identity, rows in journal.output():
        base = {**fields, **dict(zip(FILE_COLUMNS, identity or ("", "")))}
        for row in rows:
            writer.writerow({**base, **row})
        summary.rows += len(rows)
        summary.failed += bool(rows[0].get("error"))


def stream_labels(labeler: Labeler, inputs: list[str], config: LabelConfig, *, f: TextIO = sys.stdout, reporter: Reporter | None = None) -> JobSummary:
    """Label inputs to a stream, in input order, one row per input row: no lock, journal or skipping."""
    reporter = reporter or Reporter()
    windowed = config.window is not None
    columns = labeler.columns(input_extra_columns(inputs), windowed=windowed, file_columns=True)
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
    writer.writeheader()
    summary = JobSummary(out="standard output")
    started = time.perf_counter()
    reporter.start("labelling", None)
    try:
        for task, results in score_files(labeler, iter_inputs(inputs), config, ordered=True):
            for row, result in zip(task, results):
                identity = None if row.error else file_identity(row.audio_path)
                base = {**labeler.input_fields(row), **dict(zip(FILE_COLUMNS, identity or ("", "")))}
                rows = labeler.result_fields(result)
                for fields in rows:
                    writer.writerow({**base, **fields})
                summary.rows += len(rows)
            summary.labelled += len(task)
            summary.failed += sum(bool(r.error) for r in results)
            reporter.advance(len(task), failed=f"{summary.failed:,}")
    finally:
        reporter.stop()
    summary.seconds = time.perf_counter() - started
    return summary
