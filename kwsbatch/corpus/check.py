"""Preflight audit of a corpus before training or labelling: what is there, and what is wrong.

Every file is read once, in the loader's worker processes (`jobs`; 0: one per core): hashed
(BLAKE2b over its bytes) and decoded block by block, so a truncated or corrupt file shows up here
rather than in epoch 7. The audit reports

* label counts per split (a manifest's `split` column, else the manifest's name: train.csv is
  "train"; a scanned folder is one split, "all"),
* histograms of duration, sample rate, channels and format,

and these problems, which make `kwsbatch check --strict` exit with status 3:

* missing or unreadable files,
* duplicates: files with the same bytes (a clip in two splits leaks test data into training; the
  same clip under two labels is a labelling error),
* speakers in more than one split (the `speaker` column, or the Speech Commands file-name prefix
  before `_nohash_` in a scanned folder),
* labels that some split lacks.

Memory stays bounded whatever the corpus size: rows stream through, per-file facts go to a
temporary SQLite database on disk, and duplicates and speakers are found with SQL over it. Lists
of problem files in the report are capped at `max_listed` each; the counts are always complete.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from kwsbatch.corpus.config import MAX_LISTED
from kwsbatch.errors import AudioError, KwsError
from kwsbatch.files.audio import file_kind, open_audio
from kwsbatch.files.loader import run_tasks
from kwsbatch.files.manifest import ManifestRow, is_manifest_path, iter_manifest, iter_tree
from kwsbatch.progress import Reporter
from kwsbatch.settings import ONE_PER_CORE, worker_count

# Upper bin edges in seconds; Speech Commands clips are at most 1 s, so [0.75, 1) vs [1, 1.5)
# separates its short clips from its full ones.
DURATION_EDGES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, float("inf"))
SPLIT_MANIFESTS = ("train.csv", "val.csv", "test.csv")
_READ_BLOCK = 1 << 20  # bytes per read when hashing
_DECODE_BLOCK = 1 << 16  # frames per block when decoding


@dataclass(frozen=True)
class FileFacts:
    """What reading one file found; `error` is set when it cannot be used."""

    size: int | None = None
    digest: bytes | None = None
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None
    format: str | None = None  # "WAV PCM_16"
    error: str | None = None

    @property
    def duration_s(self) -> float | None:
        return self.frames / self.sample_rate if self.frames is not None and self.sample_rate else None


def inspect_file(path: str | os.PathLike) -> FileFacts:
    """Hash a file's bytes and decode all of it, block by block; never raises for a bad file.

    Only a regular file is opened: a FIFO would block the audit, a device never end.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return FileFacts(error=f"is {file_kind(mode)}, not an audio file")
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with open(path, "rb") as f:
            while block := f.read(_READ_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        return FileFacts(error="file not found")
    except OSError as e:
        return FileFacts(error=f"cannot read file ({e.strerror or e})")
    known = FileFacts(size=size, digest=digest.digest())
    try:
        with open_audio(path) as audio:
            f, frames = audio.sound, 0
            for block in f.blocks(blocksize=_DECODE_BLOCK, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    return _with(known, f, error="contains NaN or infinite samples")
                frames += len(block)
            if frames == 0:
                return _with(known, f, error="contains no samples")
            return _with(known, f, frames=frames)
    except AudioError as e:
        return FileFacts(size=size, digest=known.digest, error=str(e).removeprefix(f"{path}: "))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        text = getattr(e, "error_string", None) or str(e)
        reason = text.strip().splitlines()[0] if text.strip() else "unknown error"
        return FileFacts(size=size, digest=known.digest, error=f"cannot decode audio ({reason})")


def _with(known: FileFacts, f: sf.SoundFile, *, frames: int | None = None, error: str | None = None) -> FileFacts:
    return FileFacts(known.size, known.digest, f.samplerate, f.channels, frames, f"{f.format} {f.subtype}", error)


def inspect_many(paths: Sequence[str | None]) -> list[FileFacts]:
    """The unit of work sent to workers: plain paths in, facts out (None: known unreadable)."""
    return [inspect_file(p) if p is not None else FileFacts(error="") for p in paths]


@dataclass(frozen=True)
class Entry:
    """One listed file with the split and speaker the audit groups it by."""

    row: ManifestRow
    split: str
    speaker: str | None


def iter_entries(inputs: Iterable[str]) -> Iterator[Entry]:
    """Manifests (split from a `split` column, else the file name), folders holding train.csv /
    val.csv / test.csv (those manifests), or other folders (folder-per-label trees, noise included)."""
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            manifests = [path / name for name in SPLIT_MANIFESTS if (path / name).is_file()]
            if manifests:
                for manifest in manifests:
                    yield from _manifest_entries(manifest)
            else:
                yield from _folder_entries(given)
        elif is_manifest_path(path):
            yield from _manifest_entries(path)
        elif path.exists() or os.path.islink(path):
            yield Entry(ManifestRow(given, given, path), "all", None)
        else:
            raise KwsError(f"{given}: no such file or folder")


def _manifest_entries(path: Path) -> Iterator[Entry]:
    for row in iter_manifest(path):
        yield Entry(row, row.extras.get("split") or path.stem, row.extras.get("speaker") or None)


def _folder_entries(root: str) -> Iterator[Entry]:
    for row in iter_tree(root, noise=True):
        yield Entry(row, "all", row.extras.get("speaker"))


@dataclass
class CheckReport:
    """The audit's findings; `as_dict` is the JSON file, `problems` the number of problems."""

    inputs: list[str]
    files: int = 0
    readable: int = 0
    total_bytes: int = 0
    total_seconds: float = 0.0
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> label -> rows
    durations: list[int] = field(default_factory=lambda: [0] * len(DURATION_EDGES))
    duration_range: tuple[float, float] | None = None
    sample_rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    unreadable: int = 0
    unreadable_listed: list[dict] = field(default_factory=list)
    duplicate_groups: int = 0
    duplicate_files: int = 0
    duplicates_listed: list[dict] = field(default_factory=list)
    speakers_across_splits: int = 0
    speakers_listed: list[dict] = field(default_factory=list)
    labels_missing: dict[str, list[str]] = field(default_factory=dict)  # split -> labels it lacks

    @property
    def problems(self) -> int:
        return self.unreadable + self.duplicate_groups + self.speakers_across_splits + sum(map(len, self.labels_missing.values()))

    def as_dict(self) -> dict:
        edges = ["inf" if e == float("inf") else e for e in DURATION_EDGES]
        return {
            "inputs": self.inputs,
            "files": self.files,
            "readable": self.readable,
            "bytes": self.total_bytes,
            "seconds": round(self.total_seconds, 3),
            "labels": {split: dict(sorted(c.items(), key=lambda kv: str(kv[0]))) for split, c in self.counts.items()},
            "duration_s": {"upper_edges": edges, "counts": self.durations,
                           "min": self.duration_range[0] if self.duration_range else None,
                           "max": self.duration_range[1] if self.duration_range else None},
            "sample_rate": {str(k): v for k, v in sorted(self.sample_rates.items())},
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
            "format": dict(sorted(self.formats.items())),
            "problems": {
                "total": self.problems,
                "unreadable": {"count": self.unreadable, "listed": self.unreadable_listed},
                "duplicates": {"groups": self.duplicate_groups, "files": self.duplicate_files,
                               "listed": self.duplicates_listed},
                "speakers_across_splits": {"count": self.speakers_across_splits, "listed": self.speakers_listed},
                "labels_missing_from_split": self.labels_missing,
            },
        }


def check_corpus(inputs: Sequence[str], *, jobs: int = ONE_PER_CORE, max_listed: int = MAX_LISTED, chunk_size: int = 64,
                 reporter: Reporter | None = None) -> CheckReport:
    """Audit the files that inputs (manifests and folders) list; see the module docstring."""
    if jobs < 0:
        raise KwsError(f"jobs must be at least 0 (0: one worker process per core), got {jobs}")
    reporter = reporter or Reporter()
    report = CheckReport(inputs=[str(i) for i in inputs])
    with tempfile.TemporaryDirectory(prefix="kwsbatch-check-") as tmp:
        db = sqlite3.connect(Path(tmp) / "files.db")
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                             "CREATE TABLE files (digest BLOB, path TEXT, real TEXT, label TEXT, split TEXT, speaker TEXT);")
            reporter.start("checking", None)
            try:
                for chunk, facts in _inspect_chunks(_chunked(iter_entries(inputs), chunk_size), jobs):
                    _tally(report, chunk, facts, max_listed)
                    db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", [
                        (f.digest, *map(_to_sql, (e.row.path, os.path.abspath(e.row.audio_path), e.row.label, e.split, e.speaker)))
                        for e, f in zip(chunk, facts)])
                    reporter.advance(len(chunk), **({"unreadable": report.unreadable} if report.unreadable else {}))
            finally:
                reporter.stop()
            if report.files == 0:
                raise KwsError(f"{', '.join(report.inputs)}: no files to check")
            db.execute("CREATE INDEX by_digest ON files (digest)")
            _find_duplicates(db, report, max_listed)
            _find_speakers_across_splits(db, report, max_listed)
        finally:
            db.close()
    _find_missing_labels(report)
    return report


def _chunked(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    iterator = iter(entries)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _inspect_chunks(chunks: Iterable[list[Entry]], jobs: int) -> Iterator[tuple[list[Entry], list[FileFacts]]]:
    """(chunk, facts) in input order, read by the loader's worker processes, a bounded way ahead."""
    return run_tasks(chunks, _inspect_entries, workers=worker_count(jobs), died=_worker_died)


def _inspect_entries(chunk: list[Entry]) -> list[FileFacts]:
    return inspect_many([None if e.row.error else str(e.row.audio_path) for e in chunk])


def _worker_died(chunk: list[Entry]) -> str:
    return f"a worker process died while checking the files from {chunk[0].row.source} on"


def _tally(report: CheckReport, chunk: list[Entry], facts: list[FileFacts], max_listed: int) -> None:
    for entry, fact in zip(chunk, facts):
        report.files += 1
        report.counts.setdefault(entry.split, Counter())[entry.row.label] += 1
        report.total_bytes += fact.size or 0
        if fact.error is not None:
            report.unreadable += 1
            if len(report.unreadable_listed) < max_listed:
                error = entry.row.error or fact.error
                report.unreadable_listed.append({"path": entry.row.path, "source": entry.row.source, "error": error})
            continue
        report.readable += 1
        seconds = fact.duration_s
        report.total_seconds += seconds
        report.durations[next(i for i, edge in enumerate(DURATION_EDGES) if seconds < edge)] += 1
        low, high = report.duration_range or (seconds, seconds)
        report.duration_range = (min(low, seconds), max(high, seconds))
        report.sample_rates[fact.sample_rate] += 1
        report.channels[fact.channels] += 1
        report.formats[fact.format] += 1


def _find_duplicates(db: sqlite3.Connection, report: CheckReport, max_listed: int) -> None:
    report.duplicate_groups, report.duplicate_files = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM "
        "(SELECT COUNT(*) AS n FROM files WHERE digest IS NOT NULL GROUP BY digest HAVING n > 1)").fetchone()
    groups = db.execute("SELECT digest FROM files WHERE digest IS NOT NULL GROUP BY digest HAVING COUNT(*) > 1 "
                        "ORDER BY COUNT(DISTINCT split) DESC, COUNT(DISTINCT label) DESC, MIN(rowid) LIMIT ?", (max_listed,))
    for (digest,) in groups.fetchall():
        rows = db.execute("SELECT path, real, label, split FROM files WHERE digest = ? ORDER BY rowid", (digest,)).fetchall()
        report.duplicates_listed.append({
            "digest": digest.hex(),
            "files": [{"path": p, "label": label, "split": split} for p, _, label, split in (map(_from_sql, r) for r in rows)],
            "across_splits": len({r[3] for r in rows}) > 1,
            "conflicting_labels": len({r[2] for r in rows}) > 1,
            "same_file_listed_twice": len({r[1] for r in rows}) < len(rows),
        })


def _find_speakers_across_splits(db: sqlite3.Connection, report: CheckReport, max_listed: int) -> None:
    straddling = ("SELECT speaker FROM files WHERE speaker IS NOT NULL AND speaker != '' "
                  "GROUP BY speaker HAVING COUNT(DISTINCT split) > 1")
    report.speakers_across_splits = db.execute(f"SELECT COUNT(*) FROM ({straddling})").fetchone()[0]
    for (speaker,) in db.execute(f"{straddling} ORDER BY speaker LIMIT ?", (max_listed,)).fetchall():
        splits = db.execute("SELECT split, COUNT(*) FROM files WHERE speaker = ? GROUP BY split ORDER BY split", (speaker,))
        report.speakers_listed.append({"speaker": _from_sql(speaker), "splits": {_from_sql(k): n for k, n in splits.fetchall()}})


def _to_sql(text: str | None) -> str | bytes | None:
    """Text for the audit's SQLite file; a name that is not UTF-8 (surrogate escapes) goes in as its bytes.

    Such a value never equals any UTF-8 text, so grouping and comparing stay exact either way.
    """
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _from_sql(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _find_missing_labels(report: CheckReport) -> None:
    if len(report.counts) < 2:
        return
    labels = {label for counts in report.counts.values() for label in counts if label is not None}
    for split, counts in report.counts.items():
        missing = sorted(labels - set(counts))
        if missing:
            report.labels_missing[split] = missing


# ------------------------------------------------------------------------------- display


def render_check(report: CheckReport, console, *, show: int = 10) -> None:
    """A rich summary: label counts per split, histograms, then each kind of problem."""
    from rich.table import Table

    splits = list(report.counts)
    labels = sorted({label for c in report.counts.values() for label in c}, key=lambda label: (label is None, str(label)))
    table = Table(title=f"{report.files:,} files, {report.readable:,} readable, "
                        f"{report.total_seconds / 3600:,.2f} h, {report.total_bytes / 1e6:,.1f} MB")
    table.add_column("label")
    for split in splits:
        table.add_column(split, justify="right")
    for label in labels:
        table.add_row("(none)" if label is None else str(label), *(f"{report.counts[s].get(label, 0):,}" for s in splits))
    table.add_row("[bold]total", *(f"[bold]{sum(report.counts[s].values()):,}" for s in splits))
    console.print(table)

    low = (0.0,) + DURATION_EDGES[:-1]
    rows = [(f"{a:g}-{b:g} s" if b != float("inf") else f">= {a:g} s", n) for a, b, n in zip(low, DURATION_EDGES, report.durations) if n]
    _histogram(console, "duration", rows, report.readable)
    _histogram(console, "sample rate", [(f"{k:,} Hz", n) for k, n in sorted(report.sample_rates.items())], report.readable)
    _histogram(console, "channels", sorted(report.channels.items()), report.readable)
    _histogram(console, "format", sorted(report.formats.items()), report.readable)

    if not report.problems:
        console.print("[green]no problems found")
        return
    console.print(f"[bold red]{report.problems:,} problem(s)")
    if report.unreadable:
        console.print(f"[red]{report.unreadable:,} missing or unreadable file(s)")
        for item in report.unreadable_listed[:show]:
            console.print(f"  {item['path']}: {item['error']}", markup=False, highlight=False)
    if report.duplicate_groups:
        console.print(f"[red]{report.duplicate_groups:,} group(s) of identical files ({report.duplicate_files:,} files)")
        for group in report.duplicates_listed[:show]:
            flags = [name for name in ("across_splits", "conflicting_labels", "same_file_listed_twice") if group[name]]
            listing = ", ".join(f"{f['path']} ({f['label']}, {f['split']})" for f in group["files"][:4])
            more = f", ... {len(group['files']) - 4} more" if len(group["files"]) > 4 else ""
            console.print(f"  {listing}{more}" + (f"  [{' '.join(flags)}]" if flags else ""), markup=False, highlight=False)
    if report.speakers_across_splits:
        console.print(f"[red]{report.speakers_across_splits:,} speaker(s) in more than one split")
        for item in report.speakers_listed[:show]:
            console.print(f"  {item['speaker']}: " + ", ".join(f"{s} {n}" for s, n in item["splits"].items()), markup=False, highlight=False)
    for split, missing in report.labels_missing.items():
        console.print(f"[red]split {split} has no {', '.join(map(str, missing))}", highlight=False)


def _histogram(console, title: str, rows: list[tuple], total: int, width: int = 40) -> None:
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title, show_header=False, box=None, title_justify="left", padding=(0, 1))
    for name, n in rows:
        share = n / max(total, 1)
        table.add_row(str(name), f"{n:,}", f"{share:6.1%}", "#" * max(1, round(share * width)))
    console.print(table)
