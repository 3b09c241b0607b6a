"""Threshold sweeps for clip manifests: what each `label --threshold` would give, to choose one.

At threshold t a clip is tagged as its most probable class when that probability is at least t,
else `_unknown_`, as `label --threshold t` tags it. Keyword recall is the share of keyword clips
tagged as their own keyword; the false-alarm rate is the share of background clips (`_unknown_`,
`_silence_`: truth in underscores) tagged as some keyword. Raising t trades recall for fewer false
alarms. The most probable class comes from the p_<class> columns when present, so a predictions
file that `label --threshold` wrote is swept from its probabilities, not its thresholded labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kwsbatch.classes import is_background

# 0.00, 0.01, ..., 0.99, then two above: a calibrated model's confident keywords sit past 0.99.
THRESHOLDS = (*(round(0.01 * i, 2) for i in range(100)), 0.995, 0.999)
SHOWN_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))  # the rows a terminal table and report.json show


def _best_class(predictions: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(label, probability) of each row's most probable class: from p_<class> when every such column is there."""
    columns = [f"p_{c}" for c in classes]
    if not set(columns) <= set(predictions.columns):
        return predictions["label"].astype(str).to_numpy(), pd.to_numeric(predictions["confidence"]).to_numpy(dtype=float)
    probabilities = predictions[columns].to_numpy(dtype=float)
    best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
    return np.asarray(classes, dtype=object)[best], probabilities[np.arange(len(best)), best]


def clip_sweep(scored: pd.DataFrame, classes: Sequence[str], thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """threshold, keyword_recall, false_alarm (NaN without background clips): one row per threshold.

    scored: predictions without failed rows (true_label, and p_<class> or label and confidence).
    """
    predicted, confidence = _best_class(scored, classes)
    truth = scored["true_label"].astype(str).to_numpy()
    keyword_truth = np.array([not is_background(t) for t in truth], dtype=bool)
    keyword_predicted = np.array([not is_background(p) for p in predicted], dtype=bool)
    rows = []
    for t in thresholds:
        sure = confidence >= t
        recall = (sure & keyword_truth & (predicted == truth)).sum() / keyword_truth.sum() if keyword_truth.any() else np.nan
        false_alarm = (sure & ~keyword_truth & keyword_predicted).sum() / (~keyword_truth).sum() if (~keyword_truth).any() else np.nan
        rows.append({"threshold": t, "keyword_recall": float(recall), "false_alarm": float(false_alarm)})
    return pd.DataFrame(rows, columns=["threshold", "keyword_recall", "false_alarm"])
