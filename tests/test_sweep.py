"""sweep.py: keyword recall against false alarms at each threshold, by hand and through `kwsbatch evaluate`."""

import csv
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import HAVE_ESPEAK, VOICES, run_main, speak

from kwsbatch.classes import is_background
from kwsbatch.evaluate.sweep import clip_sweep

CLASSES = ["_silence_", "_unknown_", "no", "yes"]


def frame(rows) -> pd.DataFrame:
    """(truth, best class, its probability) rows as predictions with p_<class> columns; labels thresholded at 0.8."""
    records = []
    for truth, best, p in rows:
        rest = (1 - p) / 3
        records.append({"true_label": truth, "label": best if p >= 0.8 else "_unknown_", "confidence": p,
                        **{f"p_{c}": p if c == best else rest for c in CLASSES}})
    return pd.DataFrame(records)


def test_recall_and_false_alarms_by_hand():
    predictions = frame([
        ("yes", "yes", 0.9), ("yes", "yes", 0.6), ("yes", "no", 0.95), ("no", "no", 0.7),  # keyword clips
        ("_unknown_", "yes", 0.85), ("_unknown_", "no", 0.5), ("_unknown_", "_unknown_", 0.9), ("_silence_", "_silence_", 0.99),
    ])
    sweep = clip_sweep(predictions, CLASSES, thresholds=(0.0, 0.65, 0.8, 0.95))
    assert sweep["threshold"].tolist() == [0.0, 0.65, 0.8, 0.95]
    # Recall: right and sure; 3 of 4 keyword clips are right, at 0.9, 0.6 and 0.7.
    np.testing.assert_allclose(sweep["keyword_recall"], [3 / 4, 2 / 4, 1 / 4, 0])
    # False alarms: background clips whose best class is a keyword, as sure: 0.85 and 0.5.
    np.testing.assert_allclose(sweep["false_alarm"], [2 / 4, 1 / 4, 1 / 4, 0])
    # Swept from the probabilities: the label column, thresholded at 0.8 when written, does not cap it.
    assert clip_sweep(predictions, CLASSES, thresholds=(0.0,))["keyword_recall"].tolist() == [3 / 4]


def test_without_background_clips_false_alarms_are_undefined():
    sweep = clip_sweep(frame([("yes", "yes", 0.9)]), CLASSES, thresholds=(0.5,))
    assert sweep["keyword_recall"].tolist() == [1.0] and np.isnan(sweep["false_alarm"][0])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Keywords the bundled model knows, other words (_unknown_) and quiet noise (_silence_), as a manifest."""
    if not HAVE_ESPEAK:
        pytest.skip("needs espeak-ng")
    root = tmp_path_factory.mktemp("sweep")
    rows = []
    # Some other words sound like keywords to the model ("nah" like "no", "sup" like "stop"): false alarms at 0.6-0.98.
    others = ("hello", "table", "nah", "nope", "yeah", "sup", "dog")
    for word, label in [("yes", "yes"), ("no", "no"), ("up", "up"), ("left", "left"), *((w, "_unknown_") for w in others)]:
        for voice in (1, 6, 10):
            sf.write(root / f"{word}_{voice}.wav", speak(word, *VOICES[voice]), 16000, subtype="PCM_16")
            rows.append((f"{word}_{voice}.wav", label))
    for i in range(4):
        noise = (0.01 * (i + 1) * np.random.default_rng(i).standard_normal(16000)).astype(np.float32)
        sf.write(root / f"noise_{i}.wav", noise, 16000, subtype="PCM_16")
        rows.append((f"noise_{i}.wav", "_silence_"))
    with open(root / "clips.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return root / "clips.csv"


def test_evaluate_sweeps_thresholds_as_label_threshold_tags(clips, tmp_path):
    result = run_main("evaluate", clips, "-o", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "Threshold sweep" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sweep = pd.read_csv(tmp_path / "report" / "threshold_sweep.csv")
    assert list(sweep.columns) == ["threshold", "keyword_recall", "false_alarm"] and len(sweep) == 102
    at = sweep.set_index("threshold")
    # At 0 the sweep is the report's own keyword recall; report.json carries every 0.1.
    assert at.loc[0.0, "keyword_recall"] == pytest.approx(report["keyword_recall"])
    assert [row["threshold"] for row in report["threshold_sweep"]] == [round(0.1 * i, 1) for i in range(10)]
    for threshold in (0.5, 0.9, 0.99):
        labels = tmp_path / f"labels{threshold}.csv"
        run_main("label", clips, "--threshold", str(threshold), "-o", labels, "-q", check=True)
        rows = list(csv.DictReader(open(labels, newline="")))
        keyword = [r for r in rows if not is_background(r["true_label"])]
        background = [r for r in rows if is_background(r["true_label"])]
        recall = sum(r["label"] == r["true_label"] for r in keyword) / len(keyword)
        false_alarm = sum(not is_background(r["label"]) for r in background) / len(background)
        assert (at.loc[threshold, "keyword_recall"], at.loc[threshold, "false_alarm"]) == pytest.approx((recall, false_alarm)), threshold
    assert at["keyword_recall"].is_monotonic_decreasing and at["false_alarm"].is_monotonic_decreasing
    assert at.loc[0.0, "false_alarm"] > at.loc[0.9, "false_alarm"] > 0  # the sweep has a trade-off to show
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "report" / "threshold_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
