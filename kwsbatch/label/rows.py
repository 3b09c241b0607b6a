"""Label output rows: the columns a `label` run writes, and the values of each file's result.

One file's result (FileResult) comes from the pipeline; this module decides how it reads in an
output: which columns, in which order, formatted how, and what `--threshold` makes of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kwsbatch.files.manifest import ManifestRow
from kwsbatch.label.windows import Detection

BASE_COLUMNS = ("path", "label", "confidence")
WINDOW_COLUMNS = ("path", "start_s", "end_s", "label", "confidence")  # window mode: one row per detection
INFO_COLUMNS = ("duration_s", "sample_rate", "channels", "model", "error")
FILE_COLUMNS = ("file_size", "file_mtime_ns")  # the file as it was labelled: how a rerun tells it changed
UNKNOWN = "_unknown_"  # what --threshold writes for a clip no class is sure enough of


@dataclass
class FileResult:
    """What labelling one file gave: its audio facts and class probabilities, detections, or an error."""

    duration_s: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    error: str = ""
    probabilities: np.ndarray | None = None  # clip mode: (n_classes,)
    detections: list[Detection] = field(default_factory=list)  # window mode


class RowLayout:
    """The output columns for a model's classes, and each file's result as values in them."""

    def __init__(self, classes: Iterable[str], *, model_id: str = "", threshold: float = 0.0):
        self.classes = tuple(classes)
        self.model_id = model_id
        self.threshold = threshold  # below this top probability the label is UNKNOWN
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
