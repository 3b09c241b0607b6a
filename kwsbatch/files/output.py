"""Where `label` writes its rows: CSV (label.py's writer), JSON lines, or Parquet.

All three hold the same fields in the same order. CSV is text; JSON lines and Parquet carry
numbers as numbers (``confidence``, ``p_<class>``, ``duration_s`` as floats, ``sample_rate`` and
``channels`` as integers, null on a failed row) and everything else as text, so a reader gets
typed columns without guessing. Every format is written to a temporary file and renamed at the
end, and streamed: a corpus of millions of rows is never held in memory.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kwsbatch.errors import KwsError
from kwsbatch.files.atomic import atomic_write

OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_ROWS_PER_GROUP = 65536  # rows buffered before each Parquet row group is written


def output_format(out: str | os.PathLike | None, given: str | None = None) -> str:
    """The format asked for (--format), else the one the output's extension names, else CSV."""
    if given is not None:
        if given not in OUTPUT_FORMATS:
            raise KwsError(f"unknown output format {given!r} (choose from {', '.join(OUTPUT_FORMATS)})")
        return given
    if out is None or str(out) == "-":
        return "csv"
    return _EXTENSIONS.get(Path(out).suffix.lower(), "csv")


def column_types(classes: Iterable[str]) -> dict[str, type]:
    """The numeric columns of a label output for these classes; every other column is text."""
    return {"confidence": float, **{f"p_{c}": float for c in classes}, "duration_s": float, "sample_rate": int, "channels": int}


def write_predictions(
    results: Iterable[dict],
    out: str | os.PathLike | None,
    columns: list[str],
    types: dict[str, type],
    *,
    output_format: str = "csv",
    on_row: Callable[[dict], None] | None = None,
) -> None:
    """Stream rows to out (standard output when None or '-') in output_format."""
    if output_format == "csv":
        _write_csv(results, out, columns, on_row)
        return
    rows = _typed_rows(results, columns, types, on_row)
    if output_format == "jsonl":
        if out is None or str(out) == "-":
            import sys

            _write_json_lines(sys.stdout, rows)
            return
        with atomic_write(Path(out), "w", encoding="utf-8", newline="\n") as f:
            _write_json_lines(f, rows)
    elif output_format == "parquet":
        if out is None or str(out) == "-":
            raise KwsError("parquet output needs a file: pass -o out.parquet")
        _write_parquet(rows, Path(out), columns, types)
    else:
        raise KwsError(f"unknown output format {output_format!r} (choose from {', '.join(OUTPUT_FORMATS)})")


def label_output_header(path: str | os.PathLike, kind: str) -> list[str]:
    """The columns of an earlier label output in format kind (empty for an empty file)."""
    for header, _ in _iter_output(path, kind):
        return header
    return []


def iter_label_output(path: str | os.PathLike, kind: str) -> Iterator[dict[str, str]]:
    """Stream an earlier label output's rows as text fields ('' for null), whatever its format."""
    for _, row in _iter_output(path, kind):
        yield row


def _iter_output(path, kind: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    if kind == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
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
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
            for batch in table.iter_batches():
                for record in batch.to_pylist():
                    yield table.schema_arrow.names, {k: _text(v) for k, v in record.items()}
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise KwsError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def read_label_output(path: str | os.PathLike):
    """A label output in any of the formats, as a DataFrame of text ('' for null), as the CSV reads.

    So `evaluate --predictions` scores JSON lines and Parquet as it scores the CSV.
    """
    import pandas as pd

    kind = output_format(path)
    if kind == "csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    records = _read_json_lines(path) if kind == "jsonl" else _read_parquet(path)
    columns = list(dict.fromkeys(k for r in records for k in r))
    return pd.DataFrame([[_text(r.get(c)) for c in columns] for r in records], columns=columns, dtype=str)


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
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise KwsError("reading Parquet needs pyarrow: pip install 'kwsbatch[parquet]'") from None
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise KwsError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def json_line(values: Iterable, columns: list[str], types: dict[str, type]) -> str:
    """One output row as a JSON line, numbers as numbers and null for a failed row's empty fields."""
    record = {c: _typed(v, types.get(c, str)) for c, v in zip(columns, values)}
    return json.dumps(record, ensure_ascii=False) + "\n"


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _typed_rows(results: Iterable[dict], columns: list[str], types: dict[str, type], on_row) -> Iterator[dict]:
    for result in results:
        yield {c: _typed(result.get(c, ""), types.get(c, str)) for c in columns}
        if on_row is not None:
            on_row(result)


def _typed(value: object, kind: type) -> object:
    if kind is str:
        return "" if value is None else str(value)
    return None if value in ("", None) else kind(value)


def _write_csv(results: Iterable[dict], out, columns: list[str], on_row) -> None:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for result in results:
            writer.writerow(result)
            if on_row is not None:
                on_row(result)

    if out is None or str(out) == "-":
        import sys

        write(sys.stdout)
    else:
        with atomic_write(Path(out), "w", newline="", encoding="utf-8") as f:
            write(f)


def _write_json_lines(f, rows: Iterable[dict]) -> None:
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(rows: Iterable[dict], out: Path, columns: list[str], types: dict[str, type]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise KwsError("parquet output needs pyarrow: pip install 'kwsbatch[parquet]'") from None
    arrow_types = {str: pa.string(), float: pa.float64(), int: pa.int64()}
    schema = pa.schema([(c, arrow_types[types.get(c, str)]) for c in columns])
    with atomic_write(out, "wb") as f:
        writer = pq.ParquetWriter(f, schema)
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == PARQUET_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        writer.close()
