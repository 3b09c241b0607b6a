"""Manifests, folder trees and label inputs: which files to read, with their labels, segments and extra columns.

A manifest has one row per clip: a path (``path``, or NeMo's ``audio_filepath``, or Hugging Face's
``file_name``), relative paths resolving against the manifest's own folder; ``label``, the truth
where there is one; optionally ``offset`` and ``duration`` in seconds, which pick a segment of a
longer file; and any other column, carried through to outputs. dialects.py reads the file formats
(CSV, TSV, JSON lines, audiofolder metadata); this module gives the columns their meaning. Rows
are streamed, so a manifest of millions of rows is never held at once unless a command needs it
(training does), and every problem names the manifest and its line. A folder-per-label tree
(tree.py has its layout) reads as the manifest it stands for.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath

from kwsbatch.errors import KwsError, ManifestError
from kwsbatch.files.audio import is_audio_path
from kwsbatch.files.dialects import detect_format, is_manifest_name, iter_records, read_columns, table_layout
from kwsbatch.files.output import DIALECT_PATH_COLUMNS, PREDICTED_LABEL, is_label_output, is_model_column, table_folder
from kwsbatch.files.tree import NOISE_FOLDER, audiofolder_metadata, is_class_folder, read_split_lists, speaker_of

PATH_COLUMNS = ("path", *DIALECT_PATH_COLUMNS)  # kwsbatch's name, then NeMo's and Hugging Face audiofolder's
NEMO_LABEL_COLUMN = "command"  # NeMo's speech-commands manifests name the label "command"


@dataclass(frozen=True)
class ManifestRow:
    source: str  # "manifest.csv line 7", for messages
    path: str  # as written in the manifest, or as found in a folder
    audio_path: Path  # where to read it from
    label: str | None = None
    extras: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # known unreadable before decoding (a folder that cannot be listed)
    offset_s: float | None = None  # set: read only the segment starting here (seconds into the file)
    duration_s: float | None = None  # the segment's length; None: to the end of the file


def read_manifest(
    path: str | os.PathLike,
    *,
    require_label: bool = False,
    check_exists: bool = True,
    manifest_format: str | None = None,
    split: str | None = None,
) -> list[ManifestRow]:
    """All rows of a manifest, checked up front: for commands that must not start on a bad manifest.

    A folder is an audiofolder (its metadata.csv) or a folder-per-label tree; of a tree with
    Speech Commands' split lists, only the `split` clips ("train", "val" or "test"), when given.
    """
    if os.path.isdir(path) and not is_manifest_name(path):  # a folder named like a manifest (x.csv) was meant to be one
        rows = list(_folder_manifest(path, require_label=require_label, split=split))
        if not rows:
            raise ManifestError(f"{path}: no {f'{split} ' if split else ''}clips in label folders (expected {path}/<label>/<clip>.wav)")
    else:
        rows = list(iter_manifest(path, require_label=require_label, manifest_format=manifest_format))
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    if check_exists:
        for row in rows:
            if not row.audio_path.is_file():
                raise ManifestError(f"{row.source}: file not found: {row.path}")
    return rows


def _folder_manifest(folder: str | os.PathLike, *, require_label: bool, split: str | None) -> Iterator[ManifestRow]:
    metadata = audiofolder_metadata(folder)
    if metadata is not None:
        yield from iter_manifest(metadata, require_label=require_label, manifest_format="audiofolder")
        return
    for row in iter_tree(folder, split=split):
        if row.error:
            raise ManifestError(row.error)
        if require_label and row.label is None:
            raise ManifestError(f"{row.path}: not in a label folder (a folder-per-label tree holds {folder}/<label>/<clip>)")
        yield row


def iter_tree(root: str | os.PathLike, *, split: str | None = None, noise: bool = False) -> Iterator[ManifestRow]:
    """A folder-per-label tree's clips in sorted order, each labelled by its first folder under root.

    A file directly in root has no label; a folder that cannot be listed is a row with an error.
    With Speech Commands' split lists and a split, only that split's clips ("train": in neither
    list); without the lists, every clip. noise: _background_noise_ too, labelled so (check audits it).
    The `speaker` of a Speech Commands file name (`<speaker>_nohash_<n>.wav`) is carried as a column.
    """
    root = os.fspath(root)
    lists = read_split_lists(root) if split else None
    for row in _scan_folder(root, keep=lambda folder: is_class_folder(folder, noise=noise)):
        if row.error:
            yield row
            continue
        relative = PurePath(os.path.relpath(row.path, root))
        if lists is not None and lists.get(relative.as_posix(), "train") != split:
            continue
        extras = {"speaker": speaker_of(relative.name)} if "_nohash_" in relative.name else {}
        label = relative.parts[0] if len(relative.parts) > 1 else None
        yield ManifestRow(row.source, row.path, row.audio_path, label, extras)


def check_known_labels(rows: Iterable[ManifestRow], classes: Iterable[str], *, known_by: str = "the model") -> None:
    """Fail on the first row whose label is not one of classes."""
    classes = tuple(classes)
    for row in rows:
        if row.label not in classes:
            raise ManifestError(f"{row.source}: label {row.label!r} is not one {known_by} knows ({', '.join(classes)})")


def manifest_header(path: str | os.PathLike, *, manifest_format: str | None = None) -> list[str]:
    """The manifest's columns under kwsbatch's names: its path column as `path`, its label (if any) as `label`.

    A folder is an audiofolder (its metadata.csv's columns) or a folder-per-label tree (path, label).
    """
    if os.path.isdir(path):
        metadata = audiofolder_metadata(path)
        return manifest_header(metadata, manifest_format="audiofolder") if metadata is not None else ["path", "label"]
    manifest_format = detect_format(path, manifest_format)
    columns = read_columns(path, manifest_format)
    named = [c for c in columns if c in PATH_COLUMNS]
    if not named:
        hint = " (the first line must be a header)" if is_audio_path(columns[0]) else ""
        raise ManifestError(
            f"{path}: no path column{hint}; expected one of {', '.join(PATH_COLUMNS)}, found: {', '.join(columns)}"
        )
    if len(named) > 1 and table_layout(path, manifest_format) != "jsonl":
        raise ManifestError(f"{path}: columns {' and '.join(map(repr, named))} both name the audio file; keep one")
    label = _label_column(columns, manifest_format)
    if is_label_output(columns):
        columns = [c for c in columns if c == label or not is_model_column(c)]
    header = ["path" if c in named else "label" if c == label else c for c in columns]
    if label is None and manifest_format == "audiofolder":
        header.append("label")  # from each file's folder
    return list(dict.fromkeys(header))


def iter_manifest(
    path: str | os.PathLike, *, require_label: bool = False, manifest_format: str | None = None
) -> Iterator[ManifestRow]:
    """Stream rows, validating each; the line numbers in errors are the file's own."""
    path = Path(path)
    manifest_format = detect_format(path, manifest_format)
    if table_layout(path, manifest_format) != "jsonl":
        # A delimited file's header says up front what every row lacks; JSON lines are checked line by line.
        header = manifest_header(path, manifest_format=manifest_format)
        if require_label and "label" not in header:
            raise ManifestError(f"{path}: no 'label' column in the header; this command needs the true labels")
    base = table_folder(path)
    for line, values in iter_records(path, manifest_format):
        yield _parse_row(values, manifest_format, base, f"{path} line {line}", require_label)


def _label_column(columns: Collection[str], manifest_format: str) -> str | None:
    if is_label_output(columns) and PREDICTED_LABEL not in columns:
        return "true_label" if "true_label" in columns else None  # its label column is the model's, not the truth
    if "label" in columns:
        return "label"
    if manifest_format == "jsonl" and NEMO_LABEL_COLUMN in columns:
        return NEMO_LABEL_COLUMN
    return None


def _parse_row(values: dict[str, str], manifest_format: str, base: Path, source: str, require_label: bool) -> ManifestRow:
    """One record as a row; what is left of values after the path and label are taken becomes the extras."""
    named = [c for c in PATH_COLUMNS if c in values]
    if not named:
        raise ManifestError(f"{source}: no path (expected a field named {', '.join(PATH_COLUMNS)})")
    if len(named) > 1:
        raise ManifestError(f"{source}: {' and '.join(map(repr, named))} both name the audio file; keep one")
    given = values.pop(named[0]).strip()
    if not given:
        raise ManifestError(f"{source}: empty path")
    label_column = _label_column(values, manifest_format)
    label = values.pop(label_column).strip() if label_column else ""
    if is_label_output(values):
        values = {c: v for c, v in values.items() if not is_model_column(c)}
    if not label and manifest_format == "audiofolder":
        label = PurePosixPath(given.replace("\\", "/")).parent.name  # audiofolder's class folders
    if require_label and not label:
        if label_column or manifest_format == "audiofolder":
            raise ManifestError(f"{source}: empty label" + (" and no class folder" if manifest_format == "audiofolder" else ""))
        raise ManifestError(f"{source}: no label")
    offset_s, duration_s = _segment(values, source)
    audio_path = Path(given) if os.path.isabs(given) else base / given
    return ManifestRow(source, given, audio_path, label or None, values, offset_s=offset_s, duration_s=duration_s)


def _segment(values: dict[str, str], source: str) -> tuple[float | None, float | None]:
    """(offset, duration) in seconds when the row names a segment, else (None, None).

    Only an offset makes a segment: NeMo writes `duration` for whole files too (0.0 when it skipped
    measuring), so a duration alone is carried through, not obeyed.
    """
    offset = values.get("offset", "").strip()
    if not offset:
        return None, None
    duration = values.get("duration", "").strip()
    offset_s = _seconds(offset, "offset", source, minimum_exclusive=False)
    return offset_s, _seconds(duration, "duration", source) if duration else None


def _seconds(text: str, name: str, source: str, *, minimum_exclusive: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{source}: {name} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
        raise ManifestError(f"{source}: {name} must be {'more than' if minimum_exclusive else 'at least'} 0 seconds, got {text}")
    return value


def is_manifest_path(path: str | os.PathLike, manifest_format: str | None = None) -> bool:
    """A manifest by its name; with a format given, any file that is not audio by its name."""
    return not is_audio_path(path) if manifest_format else is_manifest_name(path)


def iter_inputs(inputs: Iterable[str], *, manifest_format: str | None = None) -> Iterator[ManifestRow]:
    """Label inputs in the order given: folders (recursive, audio extensions, sorted; an audiofolder's
    metadata.csv when it has one; a top-level _background_noise_ skipped), manifests, files."""
    for given in inputs:
        path = Path(given)
        # os.path, not Path: its is_dir() raises PermissionError under a folder we may not search.
        if os.path.isdir(given):
            metadata = audiofolder_metadata(given)
            if metadata is not None:
                yield from iter_manifest(metadata, manifest_format="audiofolder")
            else:
                yield from _scan_folder(given, keep=lambda folder: folder.name != NOISE_FOLDER)
        elif is_manifest_path(path, manifest_format):
            yield from iter_manifest(path, manifest_format=manifest_format)
        elif os.path.lexists(given) or _access_denied(given):
            yield ManifestRow(given, given, path)  # decoding says what is wrong with it, in its row
        else:
            raise KwsError(f"{given}: no such file or folder")


def check_inputs_exist(inputs: Iterable[str]) -> None:
    """Fail before any work (no lock, journal or output) when an input does not exist."""
    for given in inputs:
        try:
            os.lstat(given)
        except FileNotFoundError:
            raise KwsError(f"{given}: no such file or folder") from None
        except OSError:
            pass  # it may exist where we cannot look (an unsearchable folder): its row says why


def input_extra_columns(inputs: Iterable[str], *, manifest_format: str | None = None) -> list[str]:
    """Extra columns the manifests among inputs carry, in order of first appearance; label included."""
    columns: list[str] = []
    for given in inputs:
        if os.path.isdir(given):
            header = manifest_header(given) if audiofolder_metadata(given) is not None else []
        else:
            header = manifest_header(given, manifest_format=manifest_format) if is_manifest_path(given, manifest_format) else []
        columns += [name for name in header if name != "path" and name not in columns]
    return columns


def input_dialect(inputs: Iterable[str], *, manifest_format: str | None = None) -> tuple[str, str | None] | None:
    """(path column, truth column or None) when every input is a manifest in one dialect, NeMo's JSON
    lines (audio_filepath) or an audiofolder's metadata (file_name); None for kwsbatch's own names.
    Read from each manifest's first record: a manifest names its columns one way throughout."""
    found = set()
    for given in inputs:
        if os.path.isdir(given):
            given, fmt = audiofolder_metadata(given), "audiofolder"
            if given is None:
                return None
        elif is_manifest_path(given, manifest_format):
            fmt = detect_format(given, manifest_format)
        else:
            return None
        first = next(iter_records(given, fmt), (0, {}))[1]
        path = next((c for c in PATH_COLUMNS if c in first), "path")
        if path == "path":
            return None
        found.add((path, "label" if fmt == "audiofolder" else _label_column(first, fmt)))
    return found.pop() if len(found) == 1 else None


def _access_denied(path: str) -> bool:
    try:
        os.lstat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def _scan_folder(root: str, *, keep: Callable[[os.DirEntry], bool] = lambda folder: True) -> Iterator[ManifestRow]:
    """Walk a folder lazily, one directory listing at a time, following each real folder once;
    of the folders directly in root, only those keep accepts."""
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
                if folder != root or keep(entry):
                    subfolders.append(entry.path)
            elif is_audio_path(entry.name):
                yield ManifestRow(entry.path, entry.path, Path(entry.path))
        pending.extend(reversed(subfolders))


def chunked(rows: Iterable, size: int) -> Iterator[list]:
    """The rows in lists of `size` (the last one shorter), read lazily."""
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
