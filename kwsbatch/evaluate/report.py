"""Write and display the results of `kwsbatch evaluate`.

`write_report` leaves machine-readable files in a folder; `render_report` prints the same numbers
to a terminal. Both take an `Evaluation` from `kwsbatch.evaluate.metrics`; `write_wakeword_report`
and `render_wakeword` do the same for a `WakewordEvaluation` of long recordings (wakeword.py).
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
from kwsbatch.evaluate.sweep import SHOWN_THRESHOLDS
from kwsbatch.evaluate.wakeword import WakewordEvaluation
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
    misclassified.csv (most confident first), threshold_sweep.csv (keyword recall and false
    alarms at each threshold), by_<column>.csv for each of groups (worst first), confusion.png and
    threshold_sweep.png when matplotlib is installed, and report.json (with a `by` section for
    groups). Each file is replaced atomically (`kwsbatch.files.atomic`), and report.json comes
    last, so a report.json from this run means every other file is from this run too.
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
        ("threshold_sweep.csv", evaluation.sweep, False),
        *((group_file_name(g.column), _group_csv_table(g), False) for g in groups),
    ):
        with atomic_write(out_dir / name, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=index)
        written.append(out_dir / name)
    for png in (_write_confusion_png(evaluation, out_dir / "confusion.png"), _write_sweep_png(evaluation.sweep, out_dir / "threshold_sweep.png")):
        if png is not None:
            written.append(png)
    results = {**evaluation.to_dict(), **({"by": {g.column: g.to_dict() for g in groups}} if groups else {})}
    return [*written, _write_json(results, model_info, out_dir)]


def _write_json(results: dict, model_info: dict | None, out_dir: Path) -> Path:
    report = {"kwsbatch_version": __version__, "model": _jsonable(model_info), **results}
    with atomic_write(out_dir / "report.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out_dir / "report.json"


def write_wakeword_report(evaluation: WakewordEvaluation, out_dir: Path, *, model_info: dict | None = None) -> list[Path]:
    """Write wakeword_sweep.csv (every threshold), detections.csv (hits, false accepts and misses at
    the operating threshold), det.png with matplotlib, and report.json last, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("wakeword_sweep.csv", evaluation.sweep), ("detections.csv", evaluation.outcomes)):
        with atomic_write(out_dir / name, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
        written.append(out_dir / name)
    png = _write_det_png(evaluation, out_dir / "det.png")
    return [*written, *([png] if png else []), _write_json(evaluation.to_dict(), model_info, out_dir)]


def _write_det_png(evaluation: WakewordEvaluation, path: Path) -> Path | None:
    """The DET curve as openWakeWord draws it: miss rate against false accepts per hour, log axes
    (linear within one false accept in the audio, and one missed event, so zero stays on the plot)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sweep = evaluation.sweep.dropna(subset=["fa_per_hour", "miss_rate"])
    if sweep.empty:
        return None
    figure = Figure(figsize=(6.5, 5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(sweep["fa_per_hour"], sweep["miss_rate"], marker=".", markersize=3)
    axes.set_xscale("symlog", linthresh=1 / evaluation.hours)
    floor = 1 / max(evaluation.n_events, 1)
    axes.set_yscale("symlog", linthresh=floor)
    axes.set_yticks([0, *(t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if t >= floor), 1])
    axes.set_ylim(0, 1.05)
    axes.set_xlim(left=0)
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:.1%}".replace(".0%", "%"))
    for row in sweep[sweep["threshold"].isin(SHOWN_THRESHOLDS)].itertuples(index=False):
        axes.annotate(f"{row.threshold:g}", (row.fa_per_hour, row.miss_rate), textcoords="offset points", xytext=(4, 4), fontsize=8)
    target = evaluation.config.target_fa_per_hour
    axes.axvline(target, color="0.5", linestyle="--", linewidth=1, label=f"target: {target:g} false accepts per hour")
    if evaluation.threshold is not None:
        at = evaluation.at(evaluation.threshold)
        axes.plot([at["fa_per_hour"]], [at["miss_rate"]], "o", color="C3", label=f"threshold {evaluation.threshold:g}")
    axes.set_xlabel(f"false accepts per hour ({evaluation.hours:.2f} h of audio)")
    axes.set_ylabel(f"miss rate ({evaluation.n_events} keywords)")
    axes.set_title("DET curve: misses against false accepts, by threshold")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper right", fontsize=8)
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=120)
    return path


def render_wakeword(evaluation: WakewordEvaluation, console: Console) -> None:
    """Print the operating point and the sweep every 0.1."""
    summary = Table(title="Wake-word evaluation", show_header=False, box=box.SIMPLE)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("recordings", f"{evaluation.n_recordings} ({evaluation.hours:.3f} h)")
    summary.add_row("keywords spoken", f"{evaluation.n_events} (" + ", ".join(f"{k} {n}" for k, n in evaluation.events.items()) + ")")
    summary.add_row("target", f"{evaluation.config.target_fa_per_hour:g} false accepts per hour")
    if evaluation.threshold is None:
        summary.add_row("threshold", "none of the swept thresholds meets the target")
    else:
        at = evaluation.at(evaluation.threshold)
        summary.add_row("threshold", f"{evaluation.threshold:g} (the lowest that meets the target)")
        summary.add_row("false accepts per hour", f"{at['fa_per_hour']:.3f} ({int(at['false_accepts'])})")
        summary.add_row("miss rate", f"{at['miss_rate']:.3f} ({int(at['missed'])} missed)")
    console.print(summary)
    table = Table(title="Threshold sweep (every one in wakeword_sweep.csv)", box=box.SIMPLE_HEAD)
    for name in ("threshold", "detections", "false accepts", "per hour", "missed", "miss rate"):
        table.add_column(name, justify="right")
    for row in evaluation.sweep[evaluation.sweep["threshold"].isin(SHOWN_THRESHOLDS)].itertuples(index=False):
        table.add_row(f"{row.threshold:.1f}", str(row.detections), str(row.false_accepts), _share(row.fa_per_hour), str(row.missed), _share(row.miss_rate))
    console.print(table)
    if len(evaluation.failures):
        console.print(f"[yellow]{len(evaluation.failures)} recording(s) could not be read; report.json lists them with their errors[/yellow]")


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


def _write_sweep_png(sweep: pd.DataFrame, path: Path) -> Path | None:
    """Keyword recall against the false-alarm rate as the threshold rises (the thresholds 0.1 apart
    marked). None, and nothing written, without matplotlib or without background clips."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if sweep["false_alarm"].isna().all():
        return None
    figure = Figure(figsize=(6.5, 5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(sweep["false_alarm"], sweep["keyword_recall"], marker=".", markersize=3)
    for row in sweep[sweep["threshold"].isin(SHOWN_THRESHOLDS)].itertuples(index=False):
        axes.annotate(f"{row.threshold:g}", (row.false_alarm, row.keyword_recall), textcoords="offset points", xytext=(4, -10), fontsize=8)
    axes.set_xlabel("false alarms: share of background clips tagged as a keyword")
    axes.set_ylabel("keyword recall: share of keyword clips tagged as their keyword")
    axes.set_title("Keyword recall against false alarms, by threshold")
    axes.grid(alpha=0.3)
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
    console.print(_sweep_table(evaluation.sweep))
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


def _sweep_table(sweep: pd.DataFrame) -> Table:
    table = Table(title="Threshold sweep (every 0.01 in threshold_sweep.csv)", box=box.SIMPLE_HEAD)
    for name in ("threshold", "keyword recall", "false alarms"):
        table.add_column(name, justify="right")
    for row in sweep[sweep["threshold"].isin(SHOWN_THRESHOLDS)].itertuples(index=False):
        table.add_row(f"{row.threshold:.1f}", _share(row.keyword_recall), _share(row.false_alarm))
    return table


def _share(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def _per_class_table(evaluation: Evaluation) -> Table:
    table = Table(title="Per class", box=box.SIMPLE_HEAD)
    table.add_column("label")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    # report.json keeps 0.0 for a ratio over nothing (metrics.py); a reader of the table is told there was nothing to count.
    predicted = evaluation.confusion.sum(axis=0)
    for row, n_predicted in zip(evaluation.per_class.itertuples(index=False), predicted):
        table.add_row(
            Text(str(row.label)),  # Text: a label like "[noise]" is not rich markup
            _score(row.precision, n_predicted),
            _score(row.recall, row.support),
            _score(row.f1, row.support + n_predicted),
            str(int(row.support)),
        )
    return table


def _score(value: float, denominator: int) -> str:
    return f"{value:.3f}" if denominator else "n/a"


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
