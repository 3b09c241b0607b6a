r"""Where `label` (and `merge`) write their rows: CSV, JSON lines, or Parquet; and reading them back.

All three hold the same fields in the same order. CSV is text; JSON lines and Parquet carry
numbers as numbers (``confidence``, ``p_<class>``, ``duration_s`` as floats, ``sample_rate`` and
``channels`` as integers, null on a failed row) and everything else as text, so a reader gets
typed columns without guessing (label/rows.py says which columns are numbers). One writer,
write_label_rows, serves every format: to a file (a temporary one, renamed at the end) or to a
stream, and streamed: a corpus of millions of rows is never held in memory.

A file name may be any bytes but '/' and NUL; Python hands over the bytes that are not UTF-8 as
surrogate escapes (b'caf\xe9.wav' is 'caf\udce9.wav'), and each format keeps them so that the path
read back opens the same file (os.fsencode, or open() itself, turns the text back into the bytes):
- CSV holds the name's own bytes: the file is UTF-8 but for such names, whose cells are the
  bytes the file system has (read it with errors="surrogateescape");
- JSON lines writes each such byte as the JSON escape \udcXX (valid UTF-8 text; json.loads
  gives back the surrogate escape);
- Parquet strings must be UTF-8: `path` holds the name with U+FFFD for such bytes, and a binary
  `path_bytes` column, null for every UTF-8 name, holds the exact bytes; kwsbatch reads it back.
Other text naming such a file (the error column) is written the same way: exact in CSV and JSON
lines, with U+FFFD in Parquet.

Where the rows go (resolve_output, is_stream): a regular file is replaced atomically, through a
symbolic link to it when -o is one; '-', /dev/stdout, another descriptor, a FIFO or a character
device such as /dev/null are streams, written as they come with nothing made beside them.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import stat
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from kwsbatch.errors import KwsError
from kwsbatch.extras import install_command
from kwsbatch.files.atomic import atomic_write

OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
# A label output's own columns (label/rows.py lays them out, with a p_<class> column per class); the
# others are its inputs' columns, carried through.
BASE_COLUMNS = ("path", "label", "confidence")
WINDOW_COLUMNS = ("path", "start_s", "end_s", "label", "confidence")  # window mode: one row per detection
# warning: labelled all the same, but the file is odd (its header promises more audio than it holds);
# unlike an error, a warning is not a failure: the row counts as labelled and is not retried.
INFO_COLUMNS = ("duration_s", "sample_rate", "channels", "model", "error", "warning")
ADDED_COLUMNS = ("warning",)  # columns newer than some outputs: an output without them is kept, the cells empty
FILE_COLUMNS = ("file_size", "file_mtime_ns")  # the file as it was labelled: how a rerun tells it changed
# An output in its inputs' dialect (NeMo's JSON lines, an audiofolder's metadata.csv) keeps their names
# for the path and the truth, so it reads back in their tools; the model's label is then pred_label.
PREDICTED_LABEL = "pred_label"
DIALECT_PATH_COLUMNS = ("audio_filepath", "file_name")  # NeMo's, Hugging Face audiofolder's
_MODEL_COLUMNS = frozenset(BASE_COLUMNS + WINDOW_COLUMNS + INFO_COLUMNS + FILE_COLUMNS + (PREDICTED_LABEL,)) - {"path"}
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_ROWS_PER_GROUP = 65536  # rows buffered before each Parquet row group is written
CSV_ERRORS = "surrogateescape"  # CSV cells hold a name's own bytes, UTF-8 or not
JSON_ERRORS = "backslashreplace"  # a surrogate escape inside a JSON string becomes the JSON escape \udcXX
PATH_BYTES = "path_bytes"  # Parquet only: the exact bytes of a path that is not UTF-8


def resolve_output(out: str | os.PathLike) -> Path:
    """The file -o names: out, or the file at the end of the symbolic links out is.

    Resolved once, so the lock, the journal and the final rename all act on the real file beside
    it: renaming over the link would replace the link with a file and leave its target stale.
    """
    return Path(os.path.realpath(out)) if os.path.islink(out) else Path(out)


def table_folder(table: str | os.PathLike) -> Path:
    """The folder a manifest's or label output's relative paths are relative to: the table's own, or
    for a symbolic link, the folder of the file it names (where an output written through the link is)."""
    return resolve_output(table).parent


def is_stream(out: str | os.PathLike) -> bool:
    """Whether -o names a stream to write rows to rather than a file to replace: '-', /dev/stdout and
    the other names of an open descriptor, a FIFO, or a character device such as /dev/null."""
    out = str(out)
    if out == "-" or _descriptor(out) is not None:
        return True
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _descriptor(out: str) -> int | None:
    """The descriptor a name like /dev/stdout, /dev/fd/3 or /proc/self/fd/3 stands for, else None.

    Written through that descriptor, not opened anew: reopening /dev/stdout when cron sends it to
    a file with >> would truncate that file.
    """
    named = {"/dev/stdout": 1, "/dev/stderr": 2}
    if out in named:
        return named[out]
    for folder in ("/dev/fd/", "/proc/self/fd/"):
        if out.startswith(folder) and out[len(folder) :].isdigit():
            return int(out[len(folder) :])
    return None


@contextlib.contextmanager
def open_stream(out: str, output_format: str) -> Iterator[TextIO]:
    """Text to stream rows to (is_stream(out)): standard output, a descriptor, or the FIFO or device out names."""
    if output_format not in ("csv", "jsonl"):
        raise KwsError(f"{output_format} output needs a file: pass -o out.{output_format}")
    errors = _text_errors(output_format)
    if out == "-":
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors=errors)
        yield sys.stdout
        sys.stdout.flush()
        return
    fd = _descriptor(out)
    try:
        if fd is not None:
            f = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors=errors, newline="")
        else:
            f = open(out, "w", encoding="utf-8", errors=errors, newline="")
    except OSError as e:
        raise KwsError(f"{out}: cannot write to it ({e.strerror or e})") from None
    with f:
        yield f


def _text_errors(output_format: str) -> str:
    return CSV_ERRORS if output_format == "csv" else JSON_ERRORS


def is_label_output(columns: Collection[str]) -> bool:
    """Whether a table with these columns is a label output (given back to label or evaluate as a manifest, say)."""
    return all(c in columns for c in ("confidence", "model", "error"))


def dialect_columns(path: str | None, truth: str | None) -> dict[str, str]:
    """kwsbatch's column name -> an output's in its inputs' dialect: the path and the truth under the
    dialect's names (path, truth; None: not written), the model's label as pred_label."""
    return {"label": PREDICTED_LABEL, **({"path": path} if path else {}), **({"true_label": truth} if truth else {})}


def dialect_names(columns: Collection[str]) -> dict[str, str]:
    """kwsbatch's column name -> the one an output in its inputs' dialect wrote, read from its columns (empty: kwsbatch's own names)."""
    if PREDICTED_LABEL not in columns:
        return {}
    path = next((c for c in reversed(DIALECT_PATH_COLUMNS) if c in columns), None)
    return dialect_columns(path, "label" if "label" in columns else None)


def _kwsbatch_names(columns: Sequence[str]) -> list[str]:
    written = {v: k for k, v in dialect_names(columns).items()}
    return [written.get(c, c) for c in columns]


def is_model_column(column: str) -> bool:
    """A label output's column that the model's run wrote (not one of its inputs'): a label output read
    as a manifest leaves them out, so labelling it again gives the columns the first run gave."""
    return column in _MODEL_COLUMNS or column.startswith("p_")


class OutputPaths:
    """How a label output in `folder` names the files it lists, so that it reads back as a manifest
    (whose paths resolve against its own folder) from any working directory.

    A path given absolute (in a manifest, or found under a folder given by one) stays as given; any
    other is written relative to the output's folder, or absolute when no relative path leads there
    (another drive). An output beside its manifest, or in the working directory for a folder given
    relative, so keeps the paths it had before. A run's instance caches each folder's relative
    path: on a rerun over millions of files this is per file.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.path.abspath(folder)
        self._folders: dict[str, str] = {}  # a folder (relative to the working directory, or absolute) -> relative to self.folder

    def __call__(self, given: str, location: str | os.PathLike) -> str:
        """A file the inputs name `given`, found at `location` (relative to the working directory, or absolute), as the output names it."""
        return given if os.path.isabs(given) else self._relative(os.fspath(location))

    def rebase(self, written: str, other: OutputPaths) -> str:
        """A path as the output in other's folder wrote it, as this output names it (merge)."""
        return written if os.path.isabs(written) else self._relative(os.path.join(other.folder, written))

    def resolve(self, written: str) -> str:
        """A path as the output in this folder wrote it, as an absolute path (normalized)."""
        return os.path.normpath(os.path.join(self.folder, written))

    def _relative(self, path: str) -> str:
        head, name = os.path.split(path)
        folder = self._folders.get(head)
        if folder is None:
            try:
                folder = os.path.relpath(os.path.abspath(head or os.curdir), self.folder)
            except ValueError:  # another drive
                folder = os.path.abspath(head or os.curdir)
            folder = self._folders[head] = "" if folder == os.curdir else folder
        return os.path.join(folder, name)


def output_format(out: str | os.PathLike | None, given: str | None = None) -> str:
    """The format asked for (--output-format), else the one the output's extension names, else CSV."""
    if given is not None:
        if given not in OUTPUT_FORMATS:
            raise KwsError(f"unknown output format {given!r} (choose from {', '.join(OUTPUT_FORMATS)})")
        return given
    if out is None or str(out) == "-":
        return "csv"
    return _EXTENSIONS.get(Path(out).suffix.lower(), "csv")


def check_output_format(output_format: str) -> None:
    """Fail before any work (no lock, journal, model or labelling) when writing output_format needs a package that is missing."""
    if output_format == "parquet":
        _parquet("parquet output")


def _parquet(what: str):
    """pyarrow.parquet, or a KwsError saying what needs it and how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise KwsError(f"{what} needs pyarrow: {install_command('parquet')}") from None
    return pq


def write_label_rows(
    rows: Iterable[Sequence],
    out: str | os.PathLike | TextIO,
    columns: Sequence[str],
    types: dict[str, type],
    *,
    output_format: str = "csv",
) -> None:
    """Stream rows (values in columns order; text, or numbers for the typed formats) to out in output_format.

    out is a path, written atomically, or an open text stream (standard output) for CSV and JSON lines.
    types maps the numeric columns to float or int; every other column is text.
    """
    if output_format not in OUTPUT_FORMATS:
        raise KwsError(f"unknown output format {output_format!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    write = {"csv": _write_csv, "jsonl": _write_json_lines, "parquet": _write_parquet}[output_format]
    if not isinstance(out, (str, os.PathLike)):
        if output_format == "parquet":
            raise KwsError("parquet output needs a file: pass -o out.parquet")
        write(out, rows, columns, types)
        return
    binary = output_format == "parquet"
    text = {"newline": "", "encoding": "utf-8", "errors": _text_errors(output_format)}
    with atomic_write(Path(out), "wb" if binary else "w", **({} if binary else text)) as f:
        write(f, rows, columns, types)


def label_output_header(path: str | os.PathLike, kind: str) -> list[str]:
    """The columns of an earlier label output in format kind, in kwsbatch's names (empty for an empty file)."""
    if kind == "csv":  # read directly: an output of no files still has its header line
        with open(path, newline="", encoding="utf-8-sig", errors=CSV_ERRORS) as f:
            return _kwsbatch_names(next(csv.reader(f), []))
    for header, _ in _iter_output(path, kind):
        return header
    return []


def iter_label_output(path: str | os.PathLike, kind: str) -> Iterator[dict[str, str]]:
    """Stream an earlier label output's rows as text fields ('' for null), whatever its format."""
    for _, row in _iter_output(path, kind):
        yield row


def _iter_output(path, kind: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(header, row) of each row, in kwsbatch's column names whatever the output's dialect."""
    names: dict[tuple, list[str]] = {}
    for header, row in _iter_written(path, kind):
        header = tuple(header)
        if header not in names:
            names[header] = _kwsbatch_names(header)
        if names[header] != list(header):
            row = {name: row.get(written, "") for name, written in zip(names[header], header)}
        yield names[header], row


def _iter_written(path, kind: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    if kind == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors=CSV_ERRORS) as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.fieldnames or [], row
    elif kind == "jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise KwsError(f"{path} line {line}: not valid JSON ({e.msg})") from None
                    yield list(record), {k: _text(v) for k, v in record.items()}
    else:
        pq = _parquet("reading Parquet")
        try:
            table = pq.ParquetFile(path)
            names = [n for n in table.schema_arrow.names if n != PATH_BYTES]
            for batch in table.iter_batches():
                for record in batch.to_pylist():
                    yield names, _parquet_record(record)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise KwsError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def read_label_output(path: str | os.PathLike):
    """A label output in any of the formats, as a DataFrame of text ('' for null), as the CSV reads.

    So `evaluate --predictions` scores JSON lines and Parquet as it scores the CSV.
    """
    import pandas as pd

    kind = output_format(path)
    if kind == "csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", encoding_errors=CSV_ERRORS)
    else:
        records = _read_json_lines(path) if kind == "jsonl" else [_parquet_record(r) for r in _read_parquet(path)]
        columns = list(dict.fromkeys(k for r in records for k in r))
        table = pd.DataFrame([[_text(r.get(c)) for c in columns] for r in records], columns=columns, dtype=str)
    table.columns = _kwsbatch_names(list(table.columns))
    return table


def _read_json_lines(path: str | os.PathLike) -> list[dict]:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                try:
                    records.append(json.loads(text))
                except json.JSONDecodeError as e:
                    raise KwsError(f"{path} line {line}: not valid JSON ({e.msg})") from None
    return records


def _read_parquet(path: str | os.PathLike) -> list[dict]:
    pq = _parquet("reading Parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise KwsError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _parquet_record(record: dict) -> dict[str, str]:
    """A Parquet row as text fields, its path from path_bytes when the name is not UTF-8."""
    exact = record.pop(PATH_BYTES, None)
    fields = {k: _text(v) for k, v in record.items()}
    if exact is not None:
        fields["path"] = exact.decode("utf-8", "surrogateescape")
    return fields


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _utf8(text: str) -> str:
    """text with any surrogate escape (a byte of a name that is not UTF-8) as U+FFFD, which Parquet can hold."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _path_bytes(path: str) -> bytes | None:
    """A path's bytes when it is not UTF-8 (holds surrogate escapes), else None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")
    return None


def _typed_records(rows: Iterable[Sequence], columns: Sequence[str], types: dict[str, type]) -> Iterator[dict]:
    kinds = [types.get(c, str) for c in columns]
    for values in rows:
        yield {c: _typed(v, kind) for c, v, kind in zip(columns, values, kinds)}


def _typed(value: object, kind: type) -> object:
    if kind is str:
        return "" if value is None else str(value)
    return None if value in ("", None) else kind(value)


def _write_csv(f: TextIO, rows: Iterable[Sequence], columns: Sequence[str], types: dict[str, type]) -> None:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)


def _write_json_lines(f: TextIO, rows: Iterable[Sequence], columns: Sequence[str], types: dict[str, type]) -> None:
    for record in _typed_records(rows, columns, types):
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_parquet(f: BinaryIO, rows: Iterable[Sequence], columns: Sequence[str], types: dict[str, type]) -> None:
    pq = _parquet("parquet output")
    import pyarrow as pa
    arrow_types = {str: pa.string(), float: pa.float64(), int: pa.int64()}
    schema = pa.schema([*((c, arrow_types[types.get(c, str)]) for c in columns), (PATH_BYTES, pa.binary())])
    text = [c for c in columns if types.get(c, str) is str]
    records = ({**r, **{c: _utf8(r[c]) for c in text}, PATH_BYTES: _path_bytes(r["path"])} for r in _typed_records(rows, columns, types))
    writer = pq.ParquetWriter(f, schema)
    while batch := list(itertools.islice(records, PARQUET_ROWS_PER_GROUP)):
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    writer.close()
