"""Label output rows: the columns a `label` run writes, and the values of each file's result.

One file's result (FileResult) comes from the pipeline; this module decides how it reads in an
output: which columns, in which order, formatted how, which of them are numbers, and what
`--threshold` makes of it; and what a row is known by across runs and shards (row_key).
files/output.py writes the rows in a format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kwsbatch.files.manifest import ManifestRow, input_dialect, input_extra_columns
from kwsbatch.files.output import BASE_COLUMNS, FILE_COLUMNS, INFO_COLUMNS, WINDOW_COLUMNS, dialect_columns
from kwsbatch.label.windows import Detection, WindowScores

UNKNOWN = "_unknown_"  # what --threshold writes for a clip no class is sure enough of
_NUMBERS = {"confidence": float, "duration_s": float, "start_s": float, "end_s": float, "sample_rate": int, "channels": int,
            **{c: int for c in FILE_COLUMNS}}


def column_types(columns: Iterable[str], classes: Iterable[str] | None = None) -> dict[str, type]:
    """The numeric columns among a label output's columns, for the typed formats (JSON lines, Parquet).

    Each class's p_<class> is a float too; without classes, every p_ column is taken for one (a
    header read back, as merge reads its shards).
    """
    probabilities = {f"p_{c}" for c in classes} if classes is not None else None
    return {
        c: _NUMBERS.get(c, float)
        for c in columns
        if c in _NUMBERS or (c in probabilities if probabilities is not None else c.startswith("p_"))
    }


@dataclass
class FileResult:
    """What labelling one file gave: its audio facts and class probabilities, detections, or an error."""

    duration_s: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    error: str = ""
    warning: str = ""
    probabilities: np.ndarray | None = None  # clip mode: (n_classes,)
    detections: list[Detection] = field(default_factory=list)  # window mode, at the window config's threshold
    windows: WindowScores | None = None  # window mode: every window's best class, to merge at other thresholds


class RowLayout:
    """The output columns for a model's classes, and each file's result as values in them."""

    def __init__(self, classes: Iterable[str], *, model_id: str = "", threshold: float = 0.0):
        self.classes = tuple(classes)
        self.model_id = model_id
        self.threshold = threshold  # clip mode: below this top probability the label is UNKNOWN (window mode: WindowConfig's)
        self._reserved = {*self._own_columns(False), *self._own_columns(True), *FILE_COLUMNS, "true_label"}

    def columns(self, extra_columns: Iterable[str] = (), *, windowed: bool = False, file_columns: bool = False) -> list[str]:
        """Output columns; a manifest's own label column is the truth, carried as true_label."""
        extras = [self.output_column(c) for c in extra_columns]
        return [*self._own_columns(windowed), *(FILE_COLUMNS if file_columns else ()), *extras]

    def _own_columns(self, windowed: bool) -> list[str]:
        if windowed:
            return [*WINDOW_COLUMNS, *INFO_COLUMNS]
        return [*BASE_COLUMNS, *(f"p_{c}" for c in self.classes), *INFO_COLUMNS]

    def output_column(self, column: str) -> str:
        """Where a manifest's column goes in the output: its label is true_label; a column named
        like one of ours (say "confidence") becomes manifest_<name> rather than overwrite it."""
        if column == "label":
            return "true_label"
        return f"manifest_{column}" if column in self._reserved else column

    def input_fields(self, row: ManifestRow) -> dict:
        """The columns an output row takes from its input: the path and the manifest's own columns."""
        out = {"path": row.path}
        if row.label is not None:
            out["true_label"] = row.label
        for column, value in row.extras.items():
            out[self.output_column(column)] = value
        return out

    def result_fields(self, result: FileResult) -> list[dict]:
        """The model's columns for one file: one row, or in window mode one per detection (at least one)."""
        if result.error:
            return [{"model": self.model_id, "error": result.error}]
        info = {
            "duration_s": f"{result.duration_s:.3f}",
            "sample_rate": result.sample_rate,
            "channels": result.channels,
            "model": self.model_id,
            "error": "",
            "warning": result.warning,
        }
        p = result.probabilities
        if p is not None:
            best = int(p.argmax())
            scores = {f"p_{c}": f"{q:.6f}" for c, q in zip(self.classes, p)}
            label = self.classes[best] if p[best] >= self.threshold else UNKNOWN
            return [{"label": label, "confidence": f"{p[best]:.6f}", **scores, **info}]
        # Window mode: a file with no detection still gets a row, so every file read is accounted for.
        rows = [
            {"start_s": f"{d.start_s:.3f}", "end_s": f"{d.end_s:.3f}", "label": d.label, "confidence": f"{d.confidence:.6f}", **info}
            for d in result.detections
        ]
        return rows or [info]


class OutputColumns:
    """A run's output columns in their three groups, and rows as plain value lists in that order.

    path and the model's own columns, then FILE_COLUMNS, then the inputs' extra (manifest) columns.
    The journal stores values, not dicts, and CSV is written from value lists: on a rerun over
    millions of unchanged files, copying rows is most of the work.

    `written` are the names the output gives them: kwsbatch's, or when the inputs are in NeMo's
    dialect and the output is JSON lines, or an audiofolder's and the output is CSV, the inputs'
    own for the path and the truth, with the model's label as pred_label: it reads back in their tools.
    """

    def __init__(self, layout: RowLayout, inputs: list[str], windowed: bool, manifest_format: str | None = None,
                 output_format: str = "csv"):
        self.layout = layout
        self.own = layout.columns(windowed=windowed)  # path, then the model's columns
        self.results = self.own[1:]
        extras = input_extra_columns(inputs, manifest_format=manifest_format)
        self.all = layout.columns(extras, windowed=windowed, file_columns=True)
        self.extras = self.all[len(self.own) + len(FILE_COLUMNS) :]
        names = _dialect_names(inputs, manifest_format, output_format)
        self.written = [names.get(c, c) for c in self.all]
        self.types = {names.get(c, c): kind for c, kind in column_types(self.all, layout.classes).items()}
        if names.get("path") == "audio_filepath":  # NeMo reads its segment's seconds as numbers
            self.types.update({c: float for c in ("duration", "offset") if c in self.written})

    def input_values(self, row: ManifestRow) -> list[str]:
        fields = self.layout.input_fields(row)
        return [fields.get(c, "") for c in self.extras]

    def result_values(self, result: FileResult) -> list[list]:
        return [[fields.get(c, "") for c in self.results] for fields in self.layout.result_fields(result)]


_DIALECT_FORMATS = {"audio_filepath": "jsonl", "file_name": "csv"}  # NeMo manifests are JSON lines; audiofolder metadata, CSV


def _dialect_names(inputs: list[str], manifest_format: str | None, output_format: str) -> dict[str, str]:
    """kwsbatch's column name -> the output's, for inputs in a dialect whose own format the output is in."""
    dialect = input_dialect(inputs, manifest_format=manifest_format)
    if dialect is None or _DIALECT_FORMATS[dialect[0]] != output_format:
        return {}
    return dialect_columns(*dialect)


Key = tuple[str, str]  # (path, segment): what a file's result is known by


def segment_key(offset_s: float | None, duration_s: float | None) -> str:
    """A segment's part of a key: '' for a whole file, else its offset and duration in seconds."""
    return "" if offset_s is None else f"{offset_s!r} {duration_s!r}"


def row_key(row: ManifestRow, path: str) -> Key:
    """What a result is keyed by (in the journal, by merge, and by evaluate --predictions): the file's
    path as the output names it (files/output.py's OutputPaths), and the segment of a row with an
    offset; two fields, so no character of a path can blur them."""
    return path, segment_key(row.offset_s, row.duration_s)


def output_row_key(record: dict[str, str]) -> Key:
    """The row_key of an output row (text fields); its carried offset and duration columns name a segment."""
    offset, duration = record.get("offset", "").strip(), record.get("duration", "").strip()
    if not offset:
        return record["path"], ""
    try:
        return record["path"], segment_key(float(offset), float(duration) if duration else None)
    except ValueError:
        return record["path"], ""
