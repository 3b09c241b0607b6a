"""The journal of a label run: what is known about each file, kept on disk while a run is under way.

``<output>.journal`` is an SQLite file with three tables:

- ``results``: per file (or segment of a file), the file's size and mtime when it was labelled and its output rows (the
  values of the model's columns, as JSON); imported from the previous output, or labelled by this run and
  committed once per finished task, so a killed run loses at most the tasks in flight;
- ``inputs``: this attempt's input rows in order (rebuilt by every attempt), joined with
  ``results`` to write the output, so the output is in input order whatever order files finish in;
- ``meta``: the settings the results depend on (model, columns, window mode) and the previous
  output it imported; a journal left with other settings is discarded rather than mixed in.

Entries are keyed by (path, segment): the segment is '' for a whole file, else its offset and
duration, in a column of its own, so no character a path may hold can cut a key short. Paths are
stored as BLOBs of their file-system bytes (Python's surrogate escapes encoded back): a name that
is not UTF-8 is as good a key as any other.

Why SQLite and not an append-only CSV: a transaction is all or nothing even under SIGKILL (no torn
or doubled rows to repair), and the known files of a 10^7-file corpus are looked up by path on
disk, in bounded memory, instead of in a dict of every row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kwsbatch.errors import KwsError

if TYPE_CHECKING:  # rows.py imports numpy: label/run.py reads journal_path before a locked run's heavy imports
    from kwsbatch.label.rows import Key

FORMAT = 2  # 1 keyed segments by a separator inside the path column
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    path BLOB NOT NULL, segment TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, imported INTEGER NOT NULL, rows TEXT NOT NULL,
    PRIMARY KEY (path, segment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inputs (
    seq INTEGER PRIMARY KEY, path BLOB NOT NULL, segment TEXT NOT NULL, audio_path BLOB NOT NULL, source BLOB NOT NULL,
    fields TEXT NOT NULL, UNIQUE (path, segment)
);
"""

def _blob(text: str) -> bytes:
    """A path (or text holding one) as the file system's bytes: exact for names that are not UTF-8."""
    return text.encode("utf-8", "surrogateescape")


def _text(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogateescape")


def journal_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".journal")


def file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, mtime in ns): a file whose identity is unchanged since it was labelled is not read again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Journal:
    def __init__(self, path: Path, connection: sqlite3.Connection, *, resumed: bool):
        self.path = path
        self._db = connection
        self.resumed = resumed  # a killed run with the same settings left this journal

    @classmethod
    def open(cls, path: str | os.PathLike, settings: dict, previous_output: str | os.PathLike) -> Journal:
        """Resume the journal at path when it has these settings and the same previous output; else start afresh."""
        path = Path(path)
        state = json.dumps({"format": FORMAT, "settings": settings, "previous": file_identity(previous_output)}, sort_keys=True)
        if path.exists():
            try:
                journal = cls(path, _connect(path), resumed=True)
                if journal._meta("state") == state:
                    journal._db.execute("DELETE FROM inputs")
                    journal._db.commit()
                    return journal
                journal.close()
            except sqlite3.DatabaseError:
                pass  # damaged or not ours: it only ever held work that can be redone
            remove_journal(path)
        try:
            journal = cls(path, _connect(path), resumed=False)
            journal._set_meta("state", state)
            journal._db.commit()
        except sqlite3.Error as e:
            raise KwsError(f"{path}: cannot create the run's journal ({e})") from None
        return journal

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def imported(self) -> bool:
        """Whether the previous output's rows are in (they are imported once per journal)."""
        return self._meta("imported") == "1"

    def import_previous(self, entries: Iterable[tuple[Key, int, int, list[list]]]) -> int:
        """Take (key, size, mtime_ns, rows) from the previous output; rows this run labelled win."""
        count = 0
        for (path, segment), size, mtime_ns, rows in entries:
            count += self._db.execute(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, 1, ?)", (_blob(path), segment, size, mtime_ns, json.dumps(rows))
            ).rowcount
        self._set_meta("imported", "1")
        self._db.commit()
        return count

    def forget_imported(self) -> None:
        """--force: nothing from the previous output counts as labelled."""
        self._db.execute("DELETE FROM results WHERE imported = 1")
        self._set_meta("imported", "1")
        self._db.commit()

    def labelled_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM results WHERE imported = 0").fetchone()[0]

    def add_input(self, key: Key, audio_path: str, source: str, fields: list) -> bool:
        """Record an input row; False when its key was already given (the output has one row per path)."""
        path, segment = key
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO inputs (path, segment, audio_path, source, fields) VALUES (?, ?, ?, ?, ?)",
            (_blob(path), segment, _blob(audio_path), _blob(source), json.dumps(fields)),
        )
        if cursor.rowcount:
            return True
        first_audio, first_source = map(_text, self._db.execute(
            "SELECT audio_path, source FROM inputs WHERE path = ? AND segment = ?", (_blob(path), segment)
        ).fetchone())
        if first_audio != audio_path:
            raise KwsError(
                f"{source}: path {path!r} is also given by {first_source} for another file ({first_audio}); "
                "the output has one row per path, so give distinct paths (absolute ones, say)"
            )
        return False

    def lookup(self, key: Key, identity: tuple[int, int] | None) -> str | None:
        """Where a result for exactly this file (path, segment, size, mtime) comes from: "previous" output, "journal", or None."""
        if identity is None:
            return None
        row = self._result(key)
        if row is None or (row[0], row[1]) != identity:
            return None
        return "previous" if row[2] else "journal"

    def has_result(self, key: Key) -> bool:
        """Whether any result is kept for key, of whatever version of the file."""
        return self._result(key) is not None

    def _result(self, key: Key) -> tuple | None:
        path, segment = key
        return self._db.execute(
            "SELECT size, mtime_ns, imported FROM results WHERE path = ? AND segment = ?", (_blob(path), segment)
        ).fetchone()

    def record(self, entries: Iterable[tuple[Key, tuple[int, int] | None, list[list]]]) -> None:
        """Commit (key, identity, rows) of finished files: one transaction, all or nothing."""
        self._db.executemany(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, 0, ?)",
            [(_blob(path), segment, *(identity or (None, None)), json.dumps(rows)) for (path, segment), identity, rows in entries],
        )
        self._db.commit()

    def commit(self) -> None:
        self._db.commit()

    def output(self) -> Iterator[tuple[str, list, tuple[int, int] | None, list[list]]]:
        """(path, input fields, file identity, result rows) for every input, in input order."""
        cursor = self._db.execute(
            "SELECT i.path, i.fields, r.size, r.mtime_ns, r.rows FROM inputs i "
            "LEFT JOIN results r ON r.path = i.path AND r.segment = i.segment ORDER BY i.seq"
        )
        for path, fields, size, mtime_ns, rows in cursor:
            if rows is None:
                raise KwsError(f"{self.path}: no result for {_text(path)}; run the command again to finish it")
            yield _text(path), json.loads(fields), None if size is None else (size, mtime_ns), json.loads(rows)

    def close(self) -> None:
        self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    # WAL + NORMAL: a commit is in the file before commit() returns, so it survives the process
    # being killed; a power cut may lose the last commits but never corrupts the file.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-32768")  # 32 MiB: bounded, whatever the corpus size
    db.executescript(_SCHEMA)
    return db


def remove_journal(path: str | os.PathLike) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
