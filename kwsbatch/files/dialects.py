"""Manifest file formats: which one a file is, and its records as (line number, {column: text}).

kwsbatch reads the manifests users already have:

- ``csv``: kwsbatch's own, a header line then one row per clip;
- ``tsv``: the same with tabs;
- ``jsonl``: JSON lines, one object per line, as NeMo writes them (``.jsonl``, and ``.json``, the
  extension NeMo gives its JSON-lines manifests);
- ``audiofolder``: a Hugging Face audiofolder's ``metadata.csv`` (or ``metadata.jsonl``).

What the columns mean (which one is the path, the label, a segment) is manifest.py's business:
here a record is named text fields, and every problem names the file and its line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from kwsbatch.errors import ManifestError

MANIFEST_FORMATS = ("csv", "tsv", "jsonl", "audiofolder")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
AUDIOFOLDER_FILES = frozenset({"metadata.csv", "metadata.jsonl"})  # the names Hugging Face's audiofolder looks for
JSON_LINES_EXTENSIONS = frozenset(e for e, f in EXTENSIONS.items() if f == "jsonl")
_DELIMITERS = {"csv": ",", "tsv": "\t"}


def is_manifest_name(path: str | os.PathLike) -> bool:
    """Whether the file's name says it is a manifest in a format kwsbatch reads."""
    return Path(path).suffix.lower() in EXTENSIONS


def detect_format(path: str | os.PathLike, given: str | None = None) -> str:
    """The manifest format: the one given (--manifest-format), else the file's name says it."""
    if given is not None:
        if given not in MANIFEST_FORMATS:
            raise ManifestError(f"{path}: unknown manifest format {given!r} (choose from {', '.join(MANIFEST_FORMATS)})")
        return given
    path = Path(path)
    if path.name.lower() in AUDIOFOLDER_FILES:
        return "audiofolder"
    if path.suffix.lower() not in EXTENSIONS:
        raise ManifestError(
            f"{path}: cannot tell the manifest format from the name; use a .csv, .tsv or .jsonl extension "
            f"or pass --manifest-format ({', '.join(MANIFEST_FORMATS)})"
        )
    return EXTENSIONS[path.suffix.lower()]


def table_layout(path: str | os.PathLike, manifest_format: str) -> str:
    """How the file is laid out on disk: "csv", "tsv" or "jsonl" (an audiofolder's metadata is CSV or JSON lines)."""
    if manifest_format == "audiofolder":
        return "jsonl" if Path(path).suffix.lower() in JSON_LINES_EXTENSIONS else "csv"
    return manifest_format


def read_columns(path: str | os.PathLike, manifest_format: str) -> list[str]:
    """Column names in file order: a delimited file's header, or a JSON-lines file's keys in order of first use.

    A JSON-lines file names its fields on every line, and lines may differ, so this reads it all once.
    """
    layout = table_layout(path, manifest_format)
    if layout != "jsonl":
        return _delimited_header(path, layout)
    columns: dict[str, None] = {}
    for _, record in _json_lines(path):
        columns.update(dict.fromkeys(record))
    if not columns:
        raise ManifestError(f"{path}: manifest is empty (expected one JSON object per line)")
    return list(columns)


def iter_records(path: str | os.PathLike, manifest_format: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream (line number, {column: text}) for every non-blank row; the line numbers are the file's own."""
    layout = table_layout(path, manifest_format)
    if layout == "jsonl":
        yield from _json_lines(path)
    else:
        yield from _delimited_rows(path, layout)


def _delimited_header(path: str | os.PathLike, layout: str) -> list[str]:
    with _open(path) as f:
        try:
            header = next(csv.reader(f, delimiter=_DELIMITERS[layout]), None)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as e:
            raise ManifestError(f"{path} line 1: malformed {layout.upper()} ({e})") from None
    if not header or not any(h.strip() for h in header):
        raise ManifestError(f"{path}: manifest is empty (expected a header line such as 'path,label')")
    header = [h.strip() for h in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ManifestError(f"{path}: duplicated column(s) in the header: {', '.join(duplicated)}")
    return header



def _delimited_rows(path: str | os.PathLike, layout: str) -> Iterator[tuple[int, dict[str, str]]]:
    header = _delimited_header(path, layout)
    with _open(path) as f:
        reader = csv.reader(f, delimiter=_DELIMITERS[layout])
        line = 1
        try:
            next(reader)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    sep = _DELIMITERS[layout].replace("\t", "\\t")
                    raise ManifestError(
                        f"{path} line {line}: expected {len(header)} fields ({sep.join(header)}), found {len(cells)}"
                    )
                yield line, dict(zip(header, cells))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as e:
            raise ManifestError(f"{path} line {reader.line_num}: malformed {layout.upper()} ({e})") from None


def _json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, str]]]:
    with _open(path) as f:
        line, first = 0, True
        try:
            for line, text in enumerate(f, start=1):
                text = text.strip()
                if not text:
                    continue
                # A file that opens with "[" is most likely one JSON array rather than JSON lines.
                hint = "; kwsbatch reads JSON lines, one object per line, not a JSON array" if first and text.startswith("[") else ""
                first = False
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ManifestError(f"{path} line {line}: not valid JSON ({e.msg}){hint}") from None
                if not isinstance(record, dict):
                    raise ManifestError(f"{path} line {line}: expected a JSON object, found {type(record).__name__}{hint}")
                yield line, {str(k): _text(v) for k, v in record.items()}
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _text(value: object) -> str:
    """A JSON value as manifest text: strings as they are, null as empty, anything else as its JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _not_utf8(path: str | os.PathLike) -> ManifestError:
    """Name the line holding the first byte that is not UTF-8: decoding reads ahead, so the reader's own count is not it."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return ManifestError(
                    f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the manifest as UTF-8"
                )
    return ManifestError(f"{path}: not UTF-8 text; save the manifest as UTF-8")


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
