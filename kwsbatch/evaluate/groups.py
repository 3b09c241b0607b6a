"""Scores per group of clips (`kwsbatch evaluate --by speaker`): which speakers, engines or words
the model fails on.

Each group gets its accuracy, keyword recall (keyword clips labelled as their keyword) and
false-alarm rate (clips of a background class, `_unknown_` or `_silence_`, labelled as some
keyword). A rate with nothing to count (the keyword recall of a group of `_unknown_` words) is
None, not 0: a group without keywords has missed none. Groups with fewer than `min_clips`
scored clips are marked and left out of the summary, where one clip would make the worst group.
Pure pandas, no I/O; report.py writes and shows these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kwsbatch.classes import is_background
from kwsbatch.errors import KwsError
from kwsbatch.files.manifest import manifest_header
from kwsbatch.label.rows import RowLayout

_DECIMALS = 6


@dataclass(frozen=True, eq=False)  # eq=False: a frame has no single truth value
class GroupScores:
    column: str  # the manifest column the clips are grouped by
    min_clips: int  # a group with fewer scored clips is too small to call the worst
    # One row per group, worst first: group, n_clips (scored), accuracy, keyword_recall,
    # false_alarm_rate (NaN: nothing to count), n_keyword, n_background, n_failed, few.
    table: pd.DataFrame

    def counted(self) -> pd.DataFrame:
        """The groups large enough for the summary, worst first."""
        return self.table[~self.table["few"]]

    def summary(self) -> dict[str, Any]:
        """The worst counted group and the spread of accuracy over the counted groups (None when there are none)."""
        counted = self.counted()
        accuracy = counted["accuracy"].to_numpy(dtype=float)
        worst = counted.iloc[0] if len(counted) else None
        return {
            "n_groups": len(self.table),
            "n_counted": len(counted),
            "worst": None if worst is None else {"group": worst["group"], "accuracy": _round(worst["accuracy"]), "n_clips": int(worst["n_clips"])},
            "accuracy_min": _round(accuracy.min()) if len(accuracy) else None,
            "accuracy_median": _round(np.median(accuracy)) if len(accuracy) else None,
            "accuracy_max": _round(accuracy.max()) if len(accuracy) else None,
        }

    def line(self) -> str:
        """The summary in one line, for the terminal."""
        s = self.summary()
        fewer = s["n_groups"] - s["n_counted"]
        if s["worst"] is None:
            return f"by {self.column}: none of the {s['n_groups']} groups has {self.min_clips} or more scored clips"
        worst = s["worst"]
        return (
            f"by {self.column}: worst {worst['group']!r} at {worst['accuracy']:.1%} accuracy ({worst['n_clips']} clips); "
            f"over the {s['n_counted']} groups with >= {self.min_clips} clips, accuracy min {s['accuracy_min']:.1%}, "
            f"median {s['accuracy_median']:.1%}, max {s['accuracy_max']:.1%}"
            + (f"; {fewer} smaller group(s) not counted" if fewer else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types with rounded floats and None for rates with nothing to count, ready for JSON."""
        groups = [
            {
                "group": str(row.group),
                **{k: int(getattr(row, k)) for k in ("n_clips", "n_keyword", "n_background", "n_failed")},
                **{k: _round_or_none(getattr(row, k)) for k in ("accuracy", "keyword_recall", "false_alarm_rate")},
                "few": bool(row.few),
            }
            for row in self.table.itertuples(index=False)
        ]
        return {"column": self.column, "min_clips": self.min_clips, "summary": self.summary(), "groups": groups}


def check_group_columns(manifest, columns: Sequence[str], *, manifest_format: str | None = None) -> None:
    """Fail before any scoring when the manifest lacks a column to group by."""
    header = manifest_header(manifest, manifest_format=manifest_format)
    for column in columns:
        if column not in header:
            raise KwsError(f"{manifest}: no column {column!r} to group by (its columns: {', '.join(header)})")


def score_groups(predictions: pd.DataFrame, classes: Sequence[str], column: str, *, min_clips: int) -> GroupScores:
    """Score `predictions` (one row per file, as evaluate_predictions takes them) per value of a manifest column."""
    name = RowLayout(classes).output_column(column)
    if name not in predictions.columns:
        raise KwsError(f"no column {column!r} in the predictions to group by")
    failed = predictions["error"].astype(object).fillna("").astype(str) != ""
    truth, tagged = predictions["true_label"].astype(str), predictions["label"].astype(str)
    keyword, background_tag = ~truth.map(is_background), tagged.map(is_background)
    counts = pd.DataFrame(
        {
            "group": predictions[name].astype(object).fillna("").astype(str),
            "n_clips": ~failed,
            "correct": ~failed & (truth == tagged),
            "hits": ~failed & keyword & (truth == tagged),
            "n_keyword": ~failed & keyword,
            "n_background": ~failed & ~keyword,
            "alarms": ~failed & ~keyword & ~background_tag,
            "n_failed": failed,
        }
    )
    sums = counts.groupby("group", sort=False).sum().astype(np.int64)
    table = pd.DataFrame(
        {
            "group": sums.index.astype(str),
            "n_clips": sums["n_clips"].to_numpy(),
            "accuracy": _share(sums["correct"], sums["n_clips"]),
            "keyword_recall": _share(sums["hits"], sums["n_keyword"]),
            "false_alarm_rate": _share(sums["alarms"], sums["n_background"]),
            "n_keyword": sums["n_keyword"].to_numpy(),
            "n_background": sums["n_background"].to_numpy(),
            "n_failed": sums["n_failed"].to_numpy(),
            "few": (sums["n_clips"] < min_clips).to_numpy(),
        }
    )
    return GroupScores(column, min_clips, _worst_first(table))


def _share(numerator: pd.Series, denominator: pd.Series) -> np.ndarray:
    """numerator / denominator as floats, NaN (None in JSON) where there is nothing to count."""
    numerator, denominator = numerator.to_numpy(dtype=float), denominator.to_numpy(dtype=float)
    return np.divide(numerator, denominator, out=np.full(len(numerator), np.nan), where=denominator > 0)


def _worst_first(table: pd.DataFrame) -> pd.DataFrame:
    """Counted groups before small ones; within each, lowest accuracy, then most false alarms, then most clips, then by name."""
    order = table.assign(
        _accuracy=table["accuracy"].fillna(np.inf),
        _alarms=-table["false_alarm_rate"].fillna(-np.inf),
        _clips=-table["n_clips"],
    ).sort_values(["few", "_accuracy", "_alarms", "_clips", "group"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


def _round(value: float) -> float:
    return round(float(value), _DECIMALS)


def _round_or_none(value: float) -> float | None:
    return None if np.isnan(value) else _round(value)
