"""`kwsbatch merge`: join the outputs of a sharded label run (`--shard K/N`) into one.

Shards are read in the order given and streamed to the merged output, so memory holds one
16-byte digest per file (or segment of a file: manifest rows with an offset are entries of their
own, wherever they are in a shard) rather than the rows. Every shard must have the same columns and the
same model. A file found in two shards (overlapping arrays, a shard run twice with different N)
is written once, from the first shard that has it, and reported. With the inputs the shards
were given, files that no shard labelled (a task that never ran or died) are reported too.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kwsbatch.errors import KwsError
from kwsbatch.files.manifest import iter_inputs
from kwsbatch.files.output import (
    OutputPaths,
    check_output_format,
    iter_label_output,
    label_output_header,
    output_format,
    resolve_output,
    table_folder,
    write_label_rows,
)
from kwsbatch.label.rows import Key, column_types, output_row_key, row_key

LISTED = 5  # example paths named per problem in the summary line


@dataclass
class MergeSummary:
    out: str
    shards: int = 0
    files: int = 0  # distinct files written
    rows: int = 0
    duplicated: int = 0  # extra copies of files found again in a later shard
    missing: int = 0  # input files no shard has (checked only with inputs)
    unexpected: int = 0  # files in the shards that are not among the inputs (checked only with inputs)
    examples: dict[str, list[str]] = field(default_factory=lambda: {"duplicated": [], "missing": []})

    def note(self, problem: str, path: str) -> None:
        setattr(self, problem, getattr(self, problem) + 1)
        if len(self.examples[problem]) < LISTED:
            self.examples[problem].append(path)

    @property
    def problems(self) -> bool:
        return bool(self.duplicated or self.missing or self.unexpected)

    def line(self) -> str:
        text = f"merged {self.shards} shards: {self.files:,} files, {self.rows:,} rows -> {self.out}"
        if self.duplicated:
            text += f"; {self.duplicated:,} duplicated, kept the first copy ({self._examples('duplicated')})"
        if self.missing:
            text += f"; {self.missing:,} missing from every shard ({self._examples('missing')})"
        if self.unexpected:
            text += f"; {self.unexpected:,} files not among the inputs"
        return text


    def _examples(self, problem: str) -> str:
        return ", ".join(self.examples[problem]) + (", ..." if getattr(self, problem) > LISTED else "")


def merge_outputs(
    shards: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    out_format: str | None = None,
    inputs: list[str] | None = None,
    manifest_format: str | None = None,
) -> MergeSummary:
    """Write the shards' rows to out (csv, jsonl or parquet); compare against inputs when given."""
    out = resolve_output(out)  # through a symbolic link: the file it names, as label writes
    kind = output_format(out, out_format)
    check_output_format(kind)
    if not shards:
        raise KwsError("merge needs at least one shard output")
    for shard in shards:
        if not Path(shard).is_file():
            raise KwsError(f"{shard}: no such file")
        if Path(shard).resolve() == out.resolve():
            raise KwsError(f"{out}: is also one of the shards; write the merged output to another file")
    header = _common_header(shards)
    summary = MergeSummary(out=str(out), shards=len(shards))
    seen: set[bytes] = set()
    paths = OutputPaths(out.parent)  # each shard's paths are relative to its own folder; the merged output's, to its
    rows = _merged_rows(shards, header, paths, seen, summary)
    write_label_rows(rows, out, header, column_types(header), output_format=kind)
    if inputs is not None:
        _check_inputs(inputs, manifest_format, paths, seen, summary)
    return summary


def _digest(key: Key) -> bytes:
    path, segment = key
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape") + b"\0" + segment.encode(), digest_size=16).digest()


def _common_header(shards: list) -> list[str]:
    header: list[str] = []
    first = None
    for shard in shards:
        columns = _header(shard)
        if not columns:
            continue
        if first is None:
            header, first = columns, shard
        elif columns != header:
            raise KwsError(
                f"{shard}: has other columns than {first} (another model or other label settings); "
                "merge only the shards of one run"
            )
    if not {"path", "model"} <= set(header):
        raise KwsError(f"{shards[0]}: is not the output of `kwsbatch label` (no path and model columns)")
    return header


def _header(shard) -> list[str]:
    return label_output_header(shard, output_format(shard))


def _merged_rows(shards: list, header: list[str], paths: OutputPaths, seen: set[bytes], summary: MergeSummary) -> Iterator[list[str]]:
    model = None
    for shard in shards:
        in_shard = OutputPaths(table_folder(shard))
        # Window mode writes a file's detections on consecutive rows: a file is a group of rows.
        for written, group in itertools.groupby(iter_label_output(shard, output_format(shard)), key=output_row_key):
            path = paths.rebase(written[0], in_shard)
            group = [{**row, "path": path} for row in group]
            key = (path, written[1])
            model = model or group[0]["model"]
            if group[0]["model"] != model:
                raise KwsError(f"{shard}: {path} was labelled by model {group[0]['model']}, the shards before by {model}")
            digest = _digest(key)
            if digest in seen:
                summary.note("duplicated", path)
                continue
            seen.add(digest)
            summary.files += 1
            summary.rows += len(group)
            yield from ([row.get(c, "") for c in header] for row in group)


def _check_inputs(inputs: list[str], manifest_format: str | None, paths: OutputPaths, seen: set[bytes], summary: MergeSummary) -> None:
    expected: set[bytes] = set()
    for row in iter_inputs(inputs, manifest_format=manifest_format):
        path = paths(row.path, row.audio_path)
        key = _digest(row_key(row, path))
        if key in expected:
            continue  # the same path given twice: one row, as in label
        expected.add(key)
        if key not in seen:
            summary.note("missing", path)
    summary.unexpected = len(seen - expected)
