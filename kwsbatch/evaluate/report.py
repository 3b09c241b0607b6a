"""Write and display the results of `kwsbatch evaluate`.

`write_report` leaves machine-readable files in a folder; `render_report` prints the same numbers
to a terminal. Both take an `Evaluation` from `kwsbatch.evaluate.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kwsbatch import __version__
from kwsbatch.evaluate.groups import GroupScores
from kwsbatch.evaluate.metrics import Evaluation
from kwsbatch.files.atomic import atomic_write
from kwsbatch.train.calibrate import ECE_BINS

# Past this many labels a confusion table wraps on a 120-column terminal and stops being readable.
MAX_CONFUSION_LABELS = 15
# Past this many labels the counts in the heatmap cells overlap; the colours still read.
_MAX_ANNOTATED_LABELS = 40
# Past this many groups (147 speakers) a terminal table stops being read; by_<column>.csv has them all.
MAX_GROUP_ROWS = 20


def write_report(
    evaluation: Evaluation,
    predictions: pd.DataFrame,
    out_dir: Path,
    *,
    model_info: dict | None = None,
    groups: Sequence[GroupScores] = (),
) -> list[Path]:
    """Write the report files into `out_dir` (created if needed) and return their paths.

    Files: per_class.csv, confusion.csv (first column `truth`), predictions.csv (as given),
    misclassified.csv (most confident first), by_<column>.csv for each of groups (worst first),
    confusion.png when matplotlib is installed, and report.json (with a `by` section for groups).
    Each file is replaced atomically (`kwsbatch.files.atomic`), and report.json comes last, so a
    report.json from this run means every other file is from this run too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion = pd.DataFrame(
        evaluation.confusion,
        index=pd.Index(evaluation.labels, name="truth"),
        columns=list(evaluation.labels),
    )
    written = []
    for name, table, index in (
        ("per_class.csv", evaluation.per_class, False),
        ("confusion.csv", confusion, True),
        ("predictions.csv", predictions, False),
        ("misclassified.csv", evaluation.misclassified, False),
        *((group_file_name(g.column), _group_csv_table(g), False) for g in groups),
    ):
        with atomic_write(out_dir / name, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=index)
        written.append(out_dir / name)
    png = _write_confusion_png(evaluation, out_dir / "confusion.png")
    if png is not None:
        written.append(png)
    report = {
        "kwsbatch_version": __version__,
        "model": _jsonable(model_info),
        **evaluation.to_dict(),
        **({"by": {g.column: g.to_dict() for g in groups}} if groups else {}),
    }
    with atomic_write(out_dir / "report.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    written.append(out_dir / "report.json")
    return written


def group_file_name(column: str) -> str:
    """by_<column>.csv, with anything but letters, digits, '-' and '.' in the column's name made '_'."""
    return f"by_{re.sub(r'[^A-Za-z0-9.-]+', '_', column)}.csv"


def _group_csv_table(groups: GroupScores) -> pd.DataFrame:
    """The group table with its first column named for the grouping column (unless that name is a score's)."""
    return groups.table.rename(columns={"group": groups.column if groups.column not in groups.table.columns else "group"})


def _jsonable(value: Any) -> Any:
    """Model info comes from checkpoints and configs: turn dataclasses, numpy values, paths and
    non-finite floats into plain JSON values instead of failing after the run is done."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _write_confusion_png(evaluation: Evaluation, path: Path) -> Path | None:
    """Heatmap of the confusion matrix: colour is the row share (recall on the diagonal), each
    cell shows its count. None, and nothing written, without matplotlib or labels."""
    try:
        import matplotlib  # noqa: F401  (optional: every number is also in confusion.csv)
    except ImportError:
        return None
    # Figure renders with Agg on savefig without pyplot, so we neither switch the process-wide
    # backend under a caller that plots interactively nor leave figures in pyplot's registry.
    from matplotlib.figure import Figure

    labels = list(evaluation.labels)
    k = len(labels)
    if k == 0:
        return None
    counts = evaluation.confusion
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)

    side = min(3.5 + 0.45 * k, 24.0)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true label's files")
    axes.set_xticks(range(k), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(k), labels=labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("truth")
    axes.set_title(
        f"Confusion matrix: accuracy {evaluation.accuracy:.1%} ({evaluation.n_scored} files)"
    )
    if k <= _MAX_ANNOTATED_LABELS:
        fontsize = 10 if k <= 12 else 7
        for (row, col), n in np.ndenumerate(counts):
            colour = "0.6" if n == 0 else ("white" if share[row, col] > 0.5 else "black")
            axes.text(col, row, str(n), ha="center", va="center", fontsize=fontsize, color=colour)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=120)
    return path


def render_report(evaluation: Evaluation, console: Console) -> None:
    """Print the summary, the per-class table and (up to 15 labels) the confusion matrix."""
    console.print(_summary_table(evaluation))
    console.print(_per_class_table(evaluation))
    if len(evaluation.labels) > MAX_CONFUSION_LABELS:
        console.print(
            f"{len(evaluation.labels)} labels are too many for a terminal table; "
            "the confusion matrix is in confusion.csv"
        )
    else:
        console.print(_confusion_table(evaluation))
    if evaluation.n_failed:
        console.print(
            f"[yellow]{evaluation.n_failed} file(s) failed and were not scored; "
            "report.json lists them with their errors[/yellow]"
        )
    if len(evaluation.misclassified):
        console.print("misclassified.csv lists the wrong predictions, most confident first")


def render_groups(groups: GroupScores, console: Console) -> None:
    """Print the group table, worst first (up to MAX_GROUP_ROWS rows), and the summary line."""
    table = Table(title=f"By {groups.column}, worst first", box=box.SIMPLE_HEAD)
    table.add_column(groups.column)
    for name in ("clips", "accuracy", "keyword recall", "false alarms"):
        table.add_column(name, justify="right")
    for row in groups.table.head(MAX_GROUP_ROWS).itertuples(index=False):
        table.add_row(
            Text(row.group or "(empty)"),
            f"{row.n_clips}" + (" *" if row.few else ""),
            _rate(row.accuracy),
            _rate(row.keyword_recall),
            _rate(row.false_alarm_rate),
            style="dim" if row.few else None,
        )
    notes = []
    if groups.table["few"].any():
        notes.append(f"* fewer than {groups.min_clips} clips: not counted in the summary")
    if len(groups.table) > MAX_GROUP_ROWS:
        notes.append(f"{len(groups.table) - MAX_GROUP_ROWS} more groups in {group_file_name(groups.column)}")
    table.caption = "; ".join(notes) or None
    console.print(table)
    console.print(Text(groups.line()))


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"  # NaN: nothing to count in this group


def _summary_table(evaluation: Evaluation) -> Table:
    table = Table(title="Evaluation", show_header=False, box=box.SIMPLE)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"{evaluation.accuracy:.3f}")
    table.add_row("balanced accuracy", f"{evaluation.balanced_accuracy:.3f}")
    table.add_row("macro F1", f"{evaluation.macro_f1:.3f}")
    table.add_row(f"ECE ({ECE_BINS} bins)", f"{evaluation.ece:.3f}")
    table.add_row("keyword recall", f"{evaluation.keyword_recall:.3f}")
    for label, share in evaluation.tagged_as_keyword.items():
        table.add_row(f"{label} tagged as a keyword", f"{share:.3f}")
    table.add_row("files scored", str(evaluation.n_scored))
    table.add_row("files failed", str(evaluation.n_failed))
    table.add_row("misclassified", str(len(evaluation.misclassified)))
    return table


def _per_class_table(evaluation: Evaluation) -> Table:
    table = Table(title="Per class", box=box.SIMPLE_HEAD)
    table.add_column("label")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for row in evaluation.per_class.itertuples(index=False):
        table.add_row(
            Text(str(row.label)),  # Text: a label like "[noise]" is not rich markup
            f"{row.precision:.3f}",
            f"{row.recall:.3f}",
            f"{row.f1:.3f}",
            str(int(row.support)),
        )
    return table


def _confusion_table(evaluation: Evaluation) -> Table:
    table = Table(
        title="Confusion (rows: truth, columns: predicted)", box=box.SIMPLE_HEAD, padding=(0, 1)
    )
    table.add_column("truth")
    for label in evaluation.labels:
        table.add_column(Text(label), justify="right")
    for row, label in enumerate(evaluation.labels):
        cells = []
        for col, n in enumerate(evaluation.confusion[row]):
            style = "dim" if n == 0 else ("bold green" if row == col else "red")
            cells.append(Text(str(n), style=style))
        table.add_row(Text(label), *cells)
    return table
