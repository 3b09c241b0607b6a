import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from kwsbatch import __version__
from kwsbatch.evaluate.metrics import evaluate_predictions
from kwsbatch.evaluate.report import render_report, write_report

CLASSES = ["yes", "no", "stop"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSV_FILES = ["per_class.csv", "confusion.csv", "predictions.csv", "misclassified.csv", "threshold_sweep.csv"]


@pytest.fixture
def predictions():
    """The 3-class example of test_metrics (accuracy 5/8) plus one file that failed to decode."""
    rows = [
        ("a.wav", "yes", "yes", 0.90),
        ("b.wav", "yes", "yes", 0.92),
        ("c.wav", "yes", "no", 0.62),
        ("d.wav", "no", "no", 0.70),
        ("e.wav", "no", "yes", 0.95),
        ("f.wav", "stop", "stop", 0.99),
        ("g.wav", "stop", "stop", 0.50),
        ("h.wav", "stop", "no", 0.45),
    ]
    records = []
    for path, truth, predicted, confidence in rows:
        rest = (1.0 - confidence) / 2
        records.append(
            dict(path=path, true_label=truth, label=predicted, confidence=confidence, error="",
                 **{f"p_{c}": confidence if c == predicted else rest for c in CLASSES})
        )
    records.append(
        dict(path="broken.wav", true_label="yes", label="", confidence=np.nan,
             error="cannot decode: not a RIFF file", **{f"p_{c}": np.nan for c in CLASSES})
    )
    return pd.DataFrame(records)


@pytest.fixture
def evaluation(predictions):
    return evaluate_predictions(predictions, CLASSES)


@dataclass(frozen=True)
class FakeModelConfig:
    n_mfcc: int
    hidden_size: int


def test_write_report_writes_every_file_with_the_right_values(evaluation, predictions, tmp_path):
    out_dir = tmp_path / "reports" / "run1"  # nested and missing: write_report creates it
    model_info = {"checkpoint": Path("runs/model.pt"), "config": FakeModelConfig(13, 64),
                  "val_loss": np.float32(0.5), "best": float("nan")}
    written = write_report(evaluation, predictions, out_dir, model_info=model_info)

    expected = [*CSV_FILES, "report.json"]
    assert {p.name for p in written} >= set(expected)
    assert all(p.parent == out_dir and p.is_file() for p in written)
    assert written[-1].name == "report.json"  # last, so its presence vouches for the rest
    assert not list(out_dir.glob(".*.tmp"))

    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    assert report["kwsbatch_version"] == __version__
    assert report["model"] == {"checkpoint": "runs/model.pt",
                               "config": {"n_mfcc": 13, "hidden_size": 64},
                               "val_loss": 0.5, "best": None}
    assert report["labels"] == CLASSES
    assert (report["n_scored"], report["n_failed"], report["n_misclassified"]) == (8, 1, 3)
    assert report["accuracy"] == 0.625
    assert report["balanced_accuracy"] == 0.611111
    assert report["macro_f1"] == 0.622222
    assert report["ece"] == 0.37375
    assert report["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert report["failures"] == [{"path": "broken.wav", "error": "cannot decode: not a RIFF file"}]

    per_class = pd.read_csv(out_dir / "per_class.csv")
    assert list(per_class.columns) == ["label", "precision", "recall", "f1", "support"]
    assert per_class["label"].tolist() == CLASSES
    np.testing.assert_allclose(per_class["precision"], [2 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(per_class["recall"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(per_class["f1"], [2 / 3, 2 / 5, 4 / 5])
    assert per_class["support"].tolist() == [3, 2, 3]

    confusion = pd.read_csv(out_dir / "confusion.csv")
    assert list(confusion.columns) == ["truth", *CLASSES]
    assert confusion["truth"].tolist() == CLASSES
    assert confusion[CLASSES].to_numpy().tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]

    written_predictions = pd.read_csv(
        out_dir / "predictions.csv", keep_default_na=False, na_values=[""]
    )
    assert list(written_predictions.columns) == list(predictions.columns)
    assert len(written_predictions) == 9
    assert written_predictions["path"].tolist() == predictions["path"].tolist()
    np.testing.assert_allclose(written_predictions["confidence"], predictions["confidence"])
    assert written_predictions["error"].fillna("").tolist() == predictions["error"].tolist()

    misclassified = pd.read_csv(out_dir / "misclassified.csv")
    assert misclassified.to_dict("records") == [
        {"path": "e.wav", "truth": "no", "predicted": "yes", "confidence": 0.95},
        {"path": "c.wav", "truth": "yes", "predicted": "no", "confidence": 0.62},
        {"path": "h.wav", "truth": "stop", "predicted": "no", "confidence": 0.45},
    ]


def test_confusion_png_is_a_png(evaluation, predictions, tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(evaluation, predictions, tmp_path)
    png = tmp_path / "confusion.png"
    assert png in written
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_the_png_is_skipped(evaluation, predictions, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    written = write_report(evaluation, predictions, tmp_path)
    assert [p.name for p in written] == [*CSV_FILES, "report.json"]
    assert not (tmp_path / "confusion.png").exists()


def test_rewriting_a_report_replaces_the_files(evaluation, predictions, tmp_path):
    write_report(evaluation, predictions, tmp_path)
    (tmp_path / "report.json").write_text("stale", encoding="utf-8")
    write_report(evaluation, predictions, tmp_path, model_info={"name": "second"})
    assert json.loads((tmp_path / "report.json").read_text())["model"] == {"name": "second"}


def test_failed_write_keeps_the_previous_report(evaluation, predictions, tmp_path, monkeypatch):
    write_report(evaluation, predictions, tmp_path, model_info={"name": "first"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def write_half_then_fail(self, handle, **kwargs):
        handle.write("label,prec")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(evaluation, predictions, tmp_path, model_info={"name": "second"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no torn file, no temp


def render(evaluation) -> str:
    console = Console(record=True, width=120)
    render_report(evaluation, console)
    return console.export_text()


def test_render_report_shows_summary_per_class_and_confusion(evaluation):
    text = render(evaluation)
    for number in ("0.625", "0.611", "0.622", "0.374"):  # accuracy, balanced, macro F1, ECE
        assert number in text
    for number in ("0.667", "0.333", "1.000", "0.500", "0.400", "0.800"):  # per-class scores
        assert number in text
    assert "files scored" in text and "8" in text
    assert "files failed" in text
    assert "Confusion" in text
    rows = [line.split() for line in text.splitlines()]
    confusion_rows = [row for row in rows if row[:1] in (["yes"], ["no"], ["stop"])]
    # Each label has a per-class row and a confusion row; the confusion row ends in its counts.
    assert ["yes", "2", "1", "0"] in confusion_rows
    assert ["no", "1", "1", "0"] in confusion_rows
    assert ["stop", "0", "1", "2"] in confusion_rows
    assert "1 file(s) failed and were not scored" in text


def test_render_report_leaves_wide_confusion_to_the_csv():
    classes = [f"word{i:02d}" for i in range(16)]
    rows = [dict(path=f"{c}.wav", true_label=c, label=c, confidence=0.9, error="") for c in classes]
    evaluation = evaluate_predictions(pd.DataFrame(rows), classes)
    text = render(evaluation)
    assert "1.000" in text
    assert "word15" in text  # per-class table still lists every label
    assert "16 labels are too many" in text and "confusion.csv" in text
    assert "Confusion" not in text


def test_render_report_prints_labels_literally():
    rows = [dict(path="n.wav", true_label="[noise]", label="[noise]", confidence=0.9, error="")]
    text = render(evaluate_predictions(pd.DataFrame(rows), ["[noise]", "yes"]))
    assert "[noise]" in text


def test_piped_evaluate_prints_whole_class_names_and_n_a_for_classes_without_clips(tmp_path):
    """Captured (not a terminal) at 80 columns: the bundled model's 12-class tables keep their
    names whole, and a class the manifest has no clips of shows n/a, not 0.000."""
    from conftest import REPO, run_main

    demo = pd.read_csv(REPO / "manifests" / "demo.csv")
    subset = demo[demo["label"].isin(["yes", "no"])].assign(path=lambda d: [str((REPO / "manifests" / p).resolve()) for p in d["path"]])
    subset.to_csv(tmp_path / "yes_no.csv", index=False)
    result = run_main("evaluate", tmp_path / "yes_no.csv", "-o", tmp_path / "report", env_extra={"COLUMNS": "80"}, check=True)
    assert "…" not in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    first = {}  # each label's first row is its per-class row; the second, its confusion row
    for cells in lines:
        if cells:
            first.setdefault(cells[0], cells[1:])
    assert first["truth"] == ["_silence_", "_unknown_", "down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes"]
    assert first["up"] == ["n/a", "n/a", "n/a", "0"]
    assert first["yes"] == ["1.000", "1.000", "1.000", "3"]
