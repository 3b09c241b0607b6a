"""CSV manifests and label inputs: which files to read, with their labels and extra columns.

A manifest is a CSV with a header; ``path`` is required, relative paths resolve against the
manifest's own folder, ``label`` is the truth where there is one, and any other column is carried
through to outputs. Rows are streamed, so a manifest of millions of rows is never held at once
unless a command needs it (training does), and every problem names the manifest and its line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kwsbatch.audio import is_audio_path
from kwsbatch.errors import KwsError, ManifestError

MANIFEST_EXTENSIONS = frozenset({".csv"})


@dataclass(frozen=True)
class ManifestRow:
    source: str  # "manifest.csv line 7", for messages
    path: str  # as written in the manifest, or as found in a folder
    audio_path: Path  # where to read it from
    label: str | None = None
    extras: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # known unreadable before decoding (a folder that cannot be listed)


def read_manifest(path: str | os.PathLike, *, require_label: bool = False, check_exists: bool = True) -> list[ManifestRow]:
    """All rows of a manifest, checked up front: for commands that must not start on a bad manifest."""
    rows = list(iter_manifest(path, require_label=require_label))
    if not rows:
        raise ManifestError(f"{path}: manifest has a header but no rows")
    if check_exists:
        for row in rows:
            if not row.audio_path.is_file():
                raise ManifestError(f"{row.source}: file not found: {row.path}")
    return rows


def check_known_labels(rows: Iterable[ManifestRow], classes: Iterable[str], *, known_by: str = "the model") -> None:
    """Fail on the first row whose label is not one of classes."""
    classes = tuple(classes)
    for row in rows:
        if row.label not in classes:
            raise ManifestError(f"{row.source}: label {row.label!r} is not one {known_by} knows ({', '.join(classes)})")


def manifest_header(path: str | os.PathLike) -> list[str]:
    with _open(path) as f:
        try:
            header = next(csv.reader(f), None)
        except UnicodeDecodeError:
            raise ManifestError(f"{path}: not UTF-8 text") from None
    if not header or not any(h.strip() for h in header):
        raise ManifestError(f"{path}: manifest is empty (expected a header line such as 'path,label')")
    header = [h.strip() for h in header]
    if "path" not in header:
        hint = " (the first line must be a header)" if is_audio_path(header[0]) else ""
        raise ManifestError(f"{path}: no 'path' column in the header{hint}; found: {', '.join(header)}")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ManifestError(f"{path}: duplicated column(s) in the header: {', '.join(duplicated)}")
    return header


def iter_manifest(path: str | os.PathLike, *, require_label: bool = False) -> Iterator[ManifestRow]:
    """Stream rows, validating each; the line numbers in errors are the file's own."""
    path = Path(path)
    header = manifest_header(path)
    if require_label and "label" not in header:
        raise ManifestError(f"{path}: no 'label' column in the header; this command needs the true labels")
    base = path.parent
    with _open(path) as f:
        reader = csv.reader(f)
        line = 1
        try:
            next(reader)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                yield _parse_row(cells, header, base, f"{path} line {line}", require_label)
        except UnicodeDecodeError:
            raise ManifestError(f"{path} after line {line}: not UTF-8 text") from None
        except csv.Error as e:
            raise ManifestError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None


def _parse_row(cells: list[str], header: list[str], base: Path, source: str, require_label: bool) -> ManifestRow:
    if len(cells) != len(header):
        raise ManifestError(f"{source}: expected {len(header)} fields ({','.join(header)}), found {len(cells)}")
    values = dict(zip(header, cells))
    given = values.pop("path").strip()
    if not given:
        raise ManifestError(f"{source}: empty path")
    label = values.pop("label", None)
    label = label.strip() if label is not None else None
    if require_label and not label:
        raise ManifestError(f"{source}: empty label")
    audio_path = Path(given) if os.path.isabs(given) else base / given
    return ManifestRow(source, given, audio_path, label or None, values)


def _open(path: str | os.PathLike):
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs put first.
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a folder, not a manifest") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read manifest ({e.strerror})") from None


def is_manifest_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in MANIFEST_EXTENSIONS


def iter_inputs(inputs: Iterable[str]) -> Iterator[ManifestRow]:
    """Label inputs in the order given: folders (recursive, audio extensions, sorted), manifests, files."""
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            yield from _scan_folder(given)
        elif is_manifest_path(path):
            yield from iter_manifest(path)
        elif path.exists() or os.path.islink(path):
            yield ManifestRow(given, given, path)
        else:
            raise KwsError(f"{given}: no such file or folder")


def input_extra_columns(inputs: Iterable[str]) -> list[str]:
    """Extra columns the manifests among inputs carry, in order of first appearance; label included."""
    columns: list[str] = []
    for given in inputs:
        if not Path(given).is_dir() and is_manifest_path(given):
            for name in manifest_header(given):
                if name != "path" and name not in columns:
                    columns.append(name)
    return columns


def _scan_folder(root: str) -> Iterator[ManifestRow]:
    """Walk a folder lazily, one directory listing at a time, following each real folder once."""
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                continue  # a symlink loop or a second link to a folder already scanned
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(folder) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            yield ManifestRow(folder, folder, Path(folder), error=f"{folder}: cannot list folder ({e.strerror})")
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(entry.path)
            elif is_audio_path(entry.name):
                yield ManifestRow(entry.path, entry.path, Path(entry.path))
        pending.extend(reversed(subfolders))
