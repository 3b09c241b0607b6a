"""Fault injection, bad manifests: a clear one-line error naming the manifest (and row), or a
documented handling that these tests pin down."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import soundfile as sf
from conftest import run_main, tone

from kwsbatch.errors import ManifestError
from kwsbatch.files.manifest import read_manifest

EXIT_OK, EXIT_ERROR = 0, 1


@pytest.fixture
def clips(tmp_path) -> Path:
    for name, freq in (("a.wav", 400), ("b.wav", 2000)):
        sf.write(tmp_path / name, tone(freq, 0.3), 16000)
    return tmp_path


def write(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_no_header_is_an_error_that_says_the_first_line_must_be_one(clips):
    manifest = write(clips, "m.csv", b"a.wav,yes\nb.wav,no\n")
    result = run_main("label", manifest, "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr == (
        f"error: {manifest}: no path column (the first line must be a header); "
        "expected one of path, audio_filepath, file_name, found: a.wav, yes\n"
    )


def test_no_path_column_is_an_error_listing_the_names_it_looked_for(clips):
    manifest = write(clips, "m.csv", b"file,label\na.wav,yes\n")
    with pytest.raises(ManifestError, match="^" + str(manifest) + ": no path column; expected one of path, audio_filepath, file_name, found: file, label$"):
        read_manifest(manifest)


def test_no_label_column_is_fine_for_label_and_an_error_for_evaluate_and_train(clips, tmp_path):
    manifest = write(clips, "m.csv", b"path,word\na.wav,yes\nb.wav,no\n")
    labelled = run_main("label", manifest, "-o", tmp_path / "out.csv", "-q")
    assert labelled.returncode == EXIT_OK, labelled.stderr
    assert [r["word"] for r in read_rows(tmp_path / "out.csv")] == ["yes", "no"]
    for command in (["evaluate", manifest], ["train", manifest, "-o", tmp_path / "run"]):
        result = run_main(*command, "-q")
        assert result.returncode == EXIT_ERROR
        assert result.stderr == f"error: {manifest}: no 'label' column in the header; this command needs the true labels\n"


@pytest.mark.parametrize(
    "name, data",
    [
        ("bom.csv", b"\xef\xbb\xbfpath,label\na.wav,yes\nb.wav,no\n"),
        ("crlf.csv", b"path,label\r\na.wav,yes\r\nb.wav,no\r\n"),
        ("bom-crlf.tsv", b"\xef\xbb\xbfpath\tlabel\r\na.wav\tyes\r\nb.wav\tno\r\n"),
        ("crlf.jsonl", b'{"path": "a.wav", "label": "yes"}\r\n{"path": "b.wav", "label": "no"}\r\n'),
    ],
)
def test_a_byte_order_mark_and_crlf_line_ends_read_as_plain_utf8(clips, name, data):
    rows = read_manifest(write(clips, name, data), require_label=True)
    assert [(r.path, r.label, r.extras) for r in rows] == [("a.wav", "yes", {}), ("b.wav", "no", {})]


def test_blank_lines_are_skipped_and_rows_keep_their_own_line_numbers(clips):
    manifest = write(clips, "m.csv", b"path,label\n\na.wav,yes\n,\n\n  \nb.wav,no\n\n")
    rows = read_manifest(manifest, require_label=True)
    assert [(r.path, r.source) for r in rows] == [("a.wav", f"{manifest} line 3"), ("b.wav", f"{manifest} line 7")]


def test_duplicated_paths_give_one_output_row_when_labelling_and_count_twice_when_scoring(clips, tmp_path):
    manifest = write(clips, "m.csv", b"path,label\na.wav,yes\nb.wav,no\na.wav,yes\n")
    assert run_main("label", manifest, "-o", tmp_path / "out.csv", "-q").returncode == EXIT_OK
    assert [r["path"] for r in read_rows(tmp_path / "out.csv")] == ["a.wav", "b.wav"]
    result = run_main("evaluate", manifest, "-o", tmp_path / "report", "-q")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["path"] for r in read_rows(tmp_path / "report" / "predictions.csv")] == ["a.wav", "b.wav", "a.wav"]


def test_paths_outside_the_manifests_folder_resolve_against_that_folder_not_the_working_one(clips, tmp_path):
    write(clips, "lists/deeper/m.csv", f"path,label\n../../a.wav,yes\n{clips / 'b.wav'},no\n".encode())
    manifest = clips / "lists" / "deeper" / "m.csv"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    assert [r.audio_path for r in read_manifest(manifest)] == [manifest.parent / "../../a.wav", clips / "b.wav"]
    result = run_main("label", manifest, "-o", tmp_path / "out.csv", "-q", cwd=elsewhere)
    assert result.returncode == EXIT_OK, result.stderr
    rows = read_rows(tmp_path / "out.csv")
    # Relative to the output's folder, so the output reads back from anywhere; the absolute path as written.
    assert [(r["path"], r["error"]) for r in rows] == [(os.path.relpath(clips / "a.wav", tmp_path), ""), (str(clips / "b.wav"), "")]
    assert all(r["label"] for r in rows)


def test_a_label_the_model_does_not_know_is_an_error_naming_the_row(clips, tmp_path):
    manifest = write(clips, "m.csv", b"path,label\na.wav,yes\nb.wav,banana\n")
    result = run_main("evaluate", manifest, "-o", tmp_path / "report", "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr.startswith(f"error: {manifest} line 3: label 'banana' is not one the model knows (")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "report").exists()


def test_a_validation_label_unknown_to_the_training_manifest_is_an_error_naming_the_row(clips, tmp_path):
    train = write(clips, "train.csv", b"path,label\na.wav,yes\nb.wav,no\n")
    val = write(clips, "val.csv", b"path,label\na.wav,yes\nb.wav,maybe\n")
    result = run_main("train", train, "--val", val, "-o", tmp_path / "run", "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr.startswith(f"error: {val} line 3: label 'maybe' is not one the training manifest knows (no, yes)")


@pytest.mark.parametrize(
    "name, data, line, byte",
    [
        ("m.csv", b"path,label\na.wav,yes\nb\xe9.wav,no\n", 3, 0xE9),  # Latin-1 e-acute in the reader's first chunk
        ("m.tsv", b"path\tlabel\n" + b"a.wav\tyes\n" * 3000 + b"b.wav\tn\xf6\n", 3002, 0xF6),  # past the first 8 KiB read
        ("m.csv", b"pa\xffth,label\na.wav,yes\n", 1, 0xFF),
        ("m.jsonl", b'{"path": "a.wav", "label": "yes"}\n{"path": "b\xe9.wav", "label": "no"}\n', 2, 0xE9),
    ],
)
def test_bytes_that_are_not_utf8_are_an_error_naming_the_line(clips, name, data, line, byte):
    manifest = write(clips, name, data)
    with pytest.raises(ManifestError) as error:
        read_manifest(manifest, check_exists=False)
    assert str(error.value) == f"{manifest} line {line}: not UTF-8 text (byte 0x{byte:02x}); save the manifest as UTF-8"
