"""Scores for `kwsbatch evaluate`: confusion, per-class precision/recall/F1, calibration, and the
keyword spotter's two numbers: keywords found, and background clips taken for a keyword.

Pure numpy/pandas, no I/O; `report` writes and displays what `evaluate_predictions` returns.

Zero division: a ratio whose denominator is zero (precision of a label never predicted, recall
of a label with no support, any score over zero scored files) is 0.0, never NaN, so every number
can go into JSON and be compared between runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kwsbatch.classes import is_background
from kwsbatch.errors import KwsError
from kwsbatch.evaluate.sweep import SHOWN_THRESHOLDS, clip_sweep
from kwsbatch.train.calibrate import expected_calibration_error

REQUIRED_COLUMNS = ("path", "true_label", "label", "confidence", "error")
# Six decimals is far below any difference worth reporting and keeps report.json short to read.
_DECIMALS = 6
# A float32 softmax can overshoot 1.0 by a few ulps; that is rounding, not a broken model.
_CONFIDENCE_SLACK = 1e-6


def confusion_matrix(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Count files by (true label, predicted label): int64, shape `(len(labels), len(labels))`.

    Rows are truth and columns are predictions, both in `labels` order. A label missing from
    `labels` raises ValueError instead of being dropped, because a dropped file would silently
    inflate every score.
    """
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"labels contain duplicates: {list(labels)}")
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    try:
        rows = np.array([index[label] for label in truth], dtype=np.intp)
        cols = np.array([index[label] for label in predicted], dtype=np.intp)
    except KeyError as missing:
        raise ValueError(f"label {missing.args[0]!r} is not in labels {list(labels)}") from None
    k = len(labels)
    return np.bincount(rows * k + cols, minlength=k * k).astype(np.int64).reshape(k, k)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    n_predicted = confusion.sum(axis=0)
    precision = _ratio(true_positives, n_predicted)
    recall = _ratio(true_positives, support)
    # 2tp / (2tp + fp + fn) equals 2PR / (P + R), but stays exact on counts.
    f1 = _ratio(2 * true_positives, support + n_predicted)
    return precision, recall, f1


def per_class_scores(confusion: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One row per label: label, precision, recall, f1, support (files whose truth is the label)."""
    precision, recall, f1 = _precision_recall_f1(confusion)
    return pd.DataFrame(
        {
            "label": list(labels),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": confusion.sum(axis=1).astype(np.int64),
        }
    )


def accuracy(confusion: np.ndarray) -> float:
    """Share of files whose prediction equals their truth."""
    return float(_ratio(np.trace(confusion), confusion.sum()))


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over labels with support > 0: a rare keyword weighs as much as a common one."""
    _, recall, _ = _precision_recall_f1(confusion)
    present = confusion.sum(axis=1) > 0
    return float(recall[present].mean()) if present.any() else 0.0


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over labels that occur as truth or prediction.

    A class absent from both (an evaluation set without that keyword) has no F1 to speak of;
    averaging in its 0.0 would punish the corpus, not the model.
    """
    _, _, f1 = _precision_recall_f1(confusion)
    seen = (confusion.sum(axis=1) + confusion.sum(axis=0)) > 0
    return float(f1[seen].mean()) if seen.any() else 0.0


def keyword_recall(confusion: np.ndarray, labels: Sequence[str]) -> float:
    """Share of keyword clips (truth not a background class) labelled as their own keyword."""
    keywords = [i for i, label in enumerate(labels) if not is_background(label)]
    return float(_ratio(confusion[keywords, keywords].sum(), confusion[keywords].sum()))


def tagged_as_keyword(confusion: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """For each background class with support: the share of its clips labelled as some keyword.

    The false alarms a tagger raises: an `_unknown_` word taken for a keyword is a wrong tag in
    the output, while a keyword taken for `_unknown_` is only a missed one.
    """
    keywords = [i for i, label in enumerate(labels) if not is_background(label)]
    return {
        label: float(_ratio(confusion[i, keywords].sum(), confusion[i].sum()))
        for i, label in enumerate(labels)
        if is_background(label) and confusion[i].sum()
    }


@dataclass(frozen=True, eq=False)  # eq=False: arrays and frames have no single truth value
class Evaluation:
    """Scores of one evaluation run.

    `labels` orders the rows (truth) and columns (predicted) of `confusion`: the model's classes
    first, then any other label seen, sorted. `misclassified` is sorted by confidence, highest
    first: those are the files to listen to first.
    """

    labels: tuple[str, ...]
    confusion: np.ndarray  # (n_labels, n_labels) int64, read-only
    per_class: pd.DataFrame  # label, precision, recall, f1, support
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    ece: float
    keyword_recall: float  # keyword clips labelled as their keyword
    tagged_as_keyword: dict[str, float]  # background class -> share of its clips labelled as a keyword
    n_scored: int
    n_failed: int
    failures: pd.DataFrame  # path, error
    misclassified: pd.DataFrame  # path, truth, predicted, confidence
    sweep: pd.DataFrame  # threshold, keyword_recall, false_alarm: what each label --threshold would give (sweep.py)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types with rounded floats, ready for `json.dumps(..., allow_nan=False)`."""
        return {
            "labels": list(self.labels),
            "n_scored": self.n_scored,
            "n_failed": self.n_failed,
            "n_misclassified": len(self.misclassified),
            "accuracy": _round(self.accuracy),
            "balanced_accuracy": _round(self.balanced_accuracy),
            "macro_f1": _round(self.macro_f1),
            "ece": _round(self.ece),
            "keyword_recall": _round(self.keyword_recall),
            "tagged_as_keyword": {label: _round(share) for label, share in self.tagged_as_keyword.items()},
            "per_class": [
                {
                    "label": str(row.label),
                    "precision": _round(row.precision),
                    "recall": _round(row.recall),
                    "f1": _round(row.f1),
                    "support": int(row.support),
                }
                for row in self.per_class.itertuples(index=False)
            ],
            "confusion": self.confusion.tolist(),
            "failures": [
                {"path": str(path), "error": str(error)}
                for path, error in zip(self.failures["path"], self.failures["error"])
            ],
            # Every 0.1 here; threshold_sweep.csv has the whole sweep.
            "threshold_sweep": [
                {"threshold": row.threshold, "keyword_recall": _round_or_none(row.keyword_recall), "false_alarm": _round_or_none(row.false_alarm)}
                for row in self.sweep[self.sweep["threshold"].isin(SHOWN_THRESHOLDS)].itertuples(index=False)
            ],
        }


def _round(value: float) -> float:
    return round(float(value), _DECIMALS)


def _round_or_none(value: float) -> float | None:
    return None if np.isnan(value) else _round(value)


def evaluate_predictions(predictions: pd.DataFrame, classes: Sequence[str]) -> Evaluation:
    """Score `predictions` (one row per file) against their `true_label`.

    Rows with a non-empty `error` are counted as failures and left out of every score. A label
    outside `classes` (in truth or prediction) gets its own confusion row and column after the
    classes and counts as wrong, since the model cannot predict it.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}")
    classes = [str(label) for label in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be non-empty and unique, got {classes}")

    # A column read back from CSV has NaN for empty cells; object dtype lets NaN become "".
    error = predictions["error"].astype(object).fillna("").astype(str)
    failed = (error != "").to_numpy()
    failures = pd.DataFrame(
        {"path": predictions["path"].astype(str)[failed], "error": error[failed]}
    ).reset_index(drop=True)

    scored = predictions.loc[~failed]
    paths = scored["path"].astype(str).to_numpy()
    truth = scored["true_label"].astype(str).to_numpy()
    predicted = scored["label"].astype(str).to_numpy()
    confidence = _checked_confidence(scored)

    labels = (*classes, *sorted((set(truth) | set(predicted)) - set(classes)))
    confusion = confusion_matrix(truth, predicted, labels)
    confusion.setflags(write=False)
    wrong = truth != predicted
    misclassified = (
        pd.DataFrame(
            {
                "path": paths[wrong],
                "truth": truth[wrong],
                "predicted": predicted[wrong],
                "confidence": confidence[wrong],
            }
        )
        .sort_values("confidence", ascending=False, kind="stable")
        .reset_index(drop=True)
    )
    return Evaluation(
        labels=labels,
        confusion=confusion,
        per_class=per_class_scores(confusion, labels),
        accuracy=accuracy(confusion),
        balanced_accuracy=balanced_accuracy(confusion),
        macro_f1=macro_f1(confusion),
        ece=expected_calibration_error(confidence, ~wrong),
        keyword_recall=keyword_recall(confusion, labels),
        tagged_as_keyword=tagged_as_keyword(confusion, labels),
        n_scored=len(scored),
        n_failed=int(failed.sum()),
        failures=failures,
        misclassified=misclassified,
        sweep=clip_sweep(scored, classes),
    )


def _checked_confidence(scored: pd.DataFrame) -> np.ndarray:
    """The `confidence` column as floats in [0, 1]; a NaN or out-of-range value is a KwsError."""
    confidence = pd.to_numeric(scored["confidence"], errors="coerce").to_numpy(dtype=float)
    valid = (confidence >= -_CONFIDENCE_SLACK) & (confidence <= 1.0 + _CONFIDENCE_SLACK)
    if not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        raise KwsError(
            f"{scored['path'].iloc[first]}: confidence {scored['confidence'].iloc[first]} is "
            "not a probability in [0, 1]; the model produced invalid scores, check the checkpoint"
        )
    return np.clip(confidence, 0.0, 1.0)
