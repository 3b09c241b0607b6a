"""`kwsbatch evaluate --by COLUMN`: per-group accuracy, keyword recall and false alarms, checked
against a count by hand of the predictions the same run wrote."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_main

from kwsbatch.classes import is_background
from kwsbatch.evaluate.groups import score_groups

SAMPLES = Path(__file__).resolve().parents[1] / "kwsbatch" / "assets" / "samples"
SPEAKERS = {"0": "alice", "1": "bob", "2": "carol"}


@pytest.fixture(scope="module")
def samples_manifest(tmp_path_factory) -> Path:
    """The bundled sample clips (12 classes x 3) with a speaker column, and two wrong truths: a miss and a false alarm."""
    root = tmp_path_factory.mktemp("samples")
    shutil.copytree(SAMPLES, root / "clips")
    rows = []
    for clip in sorted((root / "clips").iterdir()):
        word, index = clip.stem.rsplit("_", 1)
        label = word if word not in ("silence", "unknown") else f"_{word}_"
        speaker = "dave" if clip.stem in ("yes_2", "no_2") else SPEAKERS[index]  # dave: 2 clips, too few to count
        label = {"silence_0": "yes", "yes_1": "_unknown_"}.get(clip.stem, label)
        rows.append({"path": str(clip), "label": label, "speaker": speaker})
    with open(root / "samples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "samples.csv"


def by_hand(predictions: Path, column: str) -> dict[str, dict]:
    """Per group: clips, accuracy, keyword recall and false-alarm rate, counted row by row."""
    groups: dict[str, dict] = {}
    with open(predictions, newline="") as f:
        for row in csv.DictReader(f):
            g = groups.setdefault(row[column], {"n": 0, "correct": 0, "keywords": 0, "hits": 0, "background": 0, "alarms": 0})
            g["n"] += 1
            g["correct"] += row["label"] == row["true_label"]
            if is_background(row["true_label"]):
                g["background"] += 1
                g["alarms"] += not is_background(row["label"])
            else:
                g["keywords"] += 1
                g["hits"] += row["label"] == row["true_label"]
    share = lambda a, b: a / b if b else None  # noqa: E731
    return {
        name: {
            "n_clips": g["n"],
            "accuracy": g["correct"] / g["n"],
            "keyword_recall": share(g["hits"], g["keywords"]),
            "false_alarm_rate": share(g["alarms"], g["background"]),
        }
        for name, g in groups.items()
    }


def assert_groups_match(report: Path, column: str, expected: dict[str, dict], min_clips: int = 10) -> list[dict]:
    """by_<column>.csv and report.json's `by` section hold the hand counts, worst first; returns the JSON groups."""
    groups = json.loads((report / "report.json").read_text())["by"][column]["groups"]
    table = pd.read_csv(report / f"by_{column}.csv", dtype={column: str}, keep_default_na=False)
    assert [g["group"] for g in groups] == table[column].tolist() and set(table[column]) == set(expected)
    for g, row in zip(groups, table.itertuples(index=False)):
        want = expected[g["group"]]
        assert g["n_clips"] == row.n_clips == want["n_clips"]
        assert g["few"] == (want["n_clips"] < min_clips) and str(g["few"]) == str(row.few)
        for score in ("accuracy", "keyword_recall", "false_alarm_rate"):
            if want[score] is None:
                assert g[score] is None and getattr(row, score) == "", (g["group"], score)
            else:
                assert g[score] == pytest.approx(want[score], abs=1e-6) and float(getattr(row, score)) == pytest.approx(want[score])
    counted = [g for g in groups if not g["few"]]
    assert [g["accuracy"] for g in counted] == sorted(g["accuracy"] for g in counted)  # worst first
    assert all(g["few"] for g in groups[len(counted):])  # the small groups after them
    return groups


def test_evaluate_by_speaker_counts_each_group(samples_manifest, tmp_path):
    result = run_main("evaluate", samples_manifest, "--by", "speaker", "-o", tmp_path / "report", "-q")
    assert result.returncode == 0, result.stderr
    expected = by_hand(tmp_path / "report" / "predictions.csv", "speaker")
    # The two wrong truths land where they were put: alice misses a keyword, bob raises a false alarm.
    assert expected["alice"]["keyword_recall"] < 1.0 and expected["bob"]["false_alarm_rate"] > 0.0
    assert expected["dave"]["false_alarm_rate"] is None  # dave has no background clips: no rate, not 0
    groups = assert_groups_match(tmp_path / "report", "speaker", expected)
    counted = [g for g in groups if not g["few"]]
    accuracies = [expected[g["group"]]["accuracy"] for g in counted]
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["by"]["speaker"]["summary"]
    assert summary["worst"]["group"] == counted[0]["group"] and summary["n_counted"] == 3 and summary["n_groups"] == 4
    assert summary["accuracy_median"] == pytest.approx(statistics.median(accuracies), abs=1e-6)
    worst = counted[0]
    line = (
        f"by speaker: worst {worst['group']!r} at {worst['accuracy']:.1%} accuracy ({worst['n_clips']} clips); "
        f"over the 3 groups with >= 10 clips, accuracy min {min(accuracies):.1%}, median {statistics.median(accuracies):.1%}, "
        f"max {max(accuracies):.1%}; 1 smaller group(s) not counted"
    )
    assert line in " ".join(result.stdout.split())
    assert "By speaker, worst first" in result.stdout and "* fewer than 10 clips" in result.stdout


def test_evaluate_by_with_predictions_takes_the_columns_from_the_manifest(samples_manifest, tmp_path):
    labels = tmp_path / "labels.csv"
    run_main("label", samples_manifest.parent / "clips", "-o", labels, "-q", check=True)
    assert "speaker" not in labels.read_text().splitlines()[0]  # a folder's labels know no speakers
    result = run_main(
        "evaluate", samples_manifest, "--predictions", labels, "--by", "speaker", "--by", "label",
        "--min-group-clips", "3", "-o", tmp_path / "report", "-q",
    )
    assert result.returncode == 0, result.stderr
    predictions = tmp_path / "report" / "predictions.csv"
    assert_groups_match(tmp_path / "report", "speaker", by_hand(predictions, "speaker"), min_clips=3)
    assert_groups_match(tmp_path / "report", "label", by_hand(predictions, "true_label"), min_clips=3)  # label: the truth


def test_evaluate_by_a_missing_column_fails_before_scoring(samples_manifest, tmp_path):
    result = run_main("evaluate", samples_manifest, "--by", "speaker", "--by", "engine", "-o", tmp_path / "report")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {samples_manifest}: no column 'engine' to group by (its columns: path, label, speaker)"
    )
    assert not (tmp_path / "report").exists()


def test_failed_clips_are_counted_apart_and_empty_rates_are_none():
    predictions = pd.DataFrame(
        {
            "path": ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"],
            "true_label": ["yes", "_unknown_", "yes", "no", "yes"],
            "label": ["yes", "_unknown_", "", "yes", "no"],
            "confidence": [0.9, 0.8, np.nan, 0.7, 0.6],
            "error": ["", "", "cannot decode audio", "", "cannot decode audio"],
            "speaker": ["s1", "s1", "s1", "", "s2"],
        }
    )
    groups = score_groups(predictions, ["yes", "no", "_unknown_"], "speaker", min_clips=1)
    records = {g["group"]: g for g in groups.to_dict()["groups"]}
    assert records["s1"] == {
        "group": "s1", "n_clips": 2, "n_keyword": 1, "n_background": 1, "n_failed": 1,
        "accuracy": 1.0, "keyword_recall": 1.0, "false_alarm_rate": 0.0, "few": False,
    }
    assert records[""]["accuracy"] == 0.0 and records[""]["false_alarm_rate"] is None
    # s2's only clip failed: nothing scored, so no rate at all, and too few clips to count.
    assert records["s2"]["n_clips"] == 0 and records["s2"]["accuracy"] is None and records["s2"]["few"]
    assert [g["group"] for g in groups.to_dict()["groups"]] == ["", "s1", "s2"]
    assert groups.summary()["worst"] == {"group": "", "accuracy": 0.0, "n_clips": 1}
