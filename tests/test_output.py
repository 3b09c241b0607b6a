"""output.py through `kwsbatch label`: JSON lines and Parquet hold the CSV's rows, with typed numbers."""

import csv
import json
import os

import pandas as pd
import pytest
from conftest import run_main

NUMERIC = {"confidence", "p_down", "p_no", "p_up", "p_yes", "duration_s"}
INTEGER = {"sample_rate", "channels", "file_size", "file_mtime_ns"}


@pytest.fixture(scope="module")
def labelled(trained_model, speech_corpus, tmp_path_factory):
    """The test split (absolute paths) plus one broken file, labelled to CSV, JSON lines and Parquet."""
    folder = tmp_path_factory.mktemp("outputs")
    with open(speech_corpus / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with open(folder / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows({**r, "path": str(speech_corpus / r["path"])} for r in rows)
        writer.writerow({"path": str(folder / "broken.wav"), "label": "yes", "speaker": "nobody"})
    for out in ("out.csv", "out.jsonl", "out.parquet"):
        result = run_main("label", folder / "clips.csv", "--model", trained_model, "-o", folder / out, "-q")
        assert result.returncode == 3, result.stderr  # the broken file
    return folder


def test_json_lines_hold_the_csv_fields_in_order_with_numbers_as_numbers(labelled):
    table = pd.read_csv(labelled / "out.csv", dtype=str, keep_default_na=False)
    lines = [json.loads(line) for line in (labelled / "out.jsonl").read_text().splitlines()]
    assert len(lines) == len(table) == 13
    assert all(list(line) == list(table.columns) for line in lines)
    for expected, line in zip(table.to_dict("records"), lines):
        for column, text in expected.items():
            if column in NUMERIC:
                assert line[column] == (None if text == "" else float(text)), column
            elif column in INTEGER:
                assert line[column] == (None if text == "" else int(text)), column
            else:
                assert line[column] == text, column
    assert isinstance(lines[0]["sample_rate"], int) and isinstance(lines[0]["confidence"], float)
    assert lines[-1]["error"].startswith(str(labelled / "broken.wav"))
    assert lines[-1]["confidence"] is None and lines[-1]["label"] == ""


def test_parquet_holds_the_json_lines_rows_with_typed_columns(labelled):
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = pq.read_table(labelled / "out.parquet")
    types = {field.name: str(field.type) for field in parquet.schema}
    assert types["confidence"] == types["p_yes"] == types["duration_s"] == "double"
    assert types["sample_rate"] == types["channels"] == "int64"
    assert types["path"] == types["error"] == types["speaker"] == "string"
    lines = [json.loads(line) for line in (labelled / "out.jsonl").read_text().splitlines()]
    rows = parquet.to_pylist()
    # Plus path_bytes, the exact bytes of a name that is not UTF-8: null for every name here.
    assert [r.pop("path_bytes") for r in rows] == [None] * len(lines)
    assert rows == lines


def test_json_lines_output_reads_back_as_a_manifest(labelled, trained_model, tmp_path):
    result = run_main("label", labelled / "out.jsonl", "--model", trained_model, "--output-format", "jsonl", "-q")
    assert result.returncode == 3  # the broken file again
    first = [json.loads(line) for line in (labelled / "out.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in again] == [r["path"] for r in first]
    # Its truth is its true_label, not the first run's predictions; the first run's own columns are not carried again.
    assert [r["true_label"] for r in again] == [r["true_label"] for r in first]
    assert [list(r) for r in again] == [list(r) for r in first]
    assert [r["confidence"] for r in again] == [r["confidence"] for r in first]


def test_parquet_needs_a_file(trained_model, speech_corpus):
    result = run_main("label", speech_corpus / "yes" / "v00.wav", "--model", trained_model, "--output-format", "parquet", "-q")
    assert result.returncode == 1
    assert result.stderr == "error: parquet output needs a file: pass -o out.parquet\n"


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_evaluate_scores_json_lines_and_parquet_predictions_as_the_csv(labelled, tmp_path, name):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    manifest = tmp_path / "truth.csv"
    manifest.write_text("\n".join((labelled / "clips.csv").read_text().splitlines()[:-1]) + "\n")  # without the broken file
    for predictions in ("out.csv", name):
        result = run_main("evaluate", manifest, "--predictions", labelled / predictions, "-o", tmp_path / predictions, "-q")
        assert result.returncode == 0, result.stderr
    report, expected = (json.loads((tmp_path / p / "report.json").read_text()) for p in (name, "out.csv"))
    assert report["accuracy"] == expected["accuracy"]
    for table in ("per_class.csv", "confusion.csv", "misclassified.csv"):
        assert (tmp_path / name / table).read_text() == (tmp_path / "out.csv" / table).read_text()


def quick_start_tree(root):
    """The checkout's layout where the quick start runs: manifests/demo.csv naming ../kwsbatch/assets/samples/*."""
    import shutil

    from conftest import REPO

    shutil.copytree(REPO / "kwsbatch" / "assets" / "samples", root / "kwsbatch" / "assets" / "samples")
    (root / "manifests").mkdir()
    shutil.copy(REPO / "manifests" / "demo.csv", root / "manifests" / "demo.csv")
    return root


def test_outputs_read_back_as_inputs_from_any_working_directory(tmp_path):
    """The quick start's labels.csv, then label, evaluate and merge on outputs from other folders."""
    root = quick_start_tree(tmp_path / "checkout")
    first = run_main("label", "manifests/demo.csv", "-o", "labels.csv", "-q", cwd=root)
    assert first.returncode == 0, first.stderr
    labels = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels["path"][:2]) == ["kwsbatch/assets/samples/silence_0.wav", "kwsbatch/assets/samples/silence_1.flac"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_main("label", root / "labels.csv", "-o", "again.csv", "-q", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    relabelled = pd.read_csv(elsewhere / "again.csv", dtype=str, keep_default_na=False)
    assert list(relabelled["path"]) == [os.path.relpath(root / p, elsewhere) for p in labels["path"]]
    assert list(relabelled.columns) == list(labels.columns)
    for column in ("label", "confidence", "true_label", "speaker"):
        assert list(relabelled[column]) == list(labels[column]), column
    # evaluate: the output as the manifest (its true_label is the truth), and as --predictions for the manifest.
    as_manifest, as_predictions = [root / "labels.csv"], [root / "manifests" / "demo.csv", "--predictions", "../checkout/labels.csv"]
    for name, args in (("as-manifest", as_manifest), ("predictions", as_predictions)):
        result = run_main("evaluate", *args, "-o", name, "-q", cwd=elsewhere)
        assert result.returncode == 0, result.stderr
    scored = [json.loads((elsewhere / name / "report.json").read_text()) for name in ("as-manifest", "predictions")]
    assert scored[0]["accuracy"] == scored[1]["accuracy"] and scored[0]["n_scored"] == 36
    # merge: shards written in two folders, merged into a third, checked against the inputs.
    for k in (0, 1):
        run_main("label", "manifests/demo.csv", "--shard", f"{k}/2", "-o", f"shard{k}/labels.csv", "-q", cwd=root, check=True)
    merged = run_main("merge", root / "shard0" / "labels.csv", root / "shard1" / "labels.csv", "-o", "merged.csv",
                      "--inputs", root / "manifests" / "demo.csv", cwd=elsewhere)
    assert merged.returncode == 0, merged.stderr  # no file missing, none duplicated
    merged_rows = pd.read_csv(elsewhere / "merged.csv", dtype=str, keep_default_na=False)
    assert sorted(merged_rows["path"]) == sorted(relabelled["path"])
