"""manifest.py: CSV manifests as spreadsheets write them, and errors that name the manifest and line."""

import csv
import io
import os
import re
from pathlib import Path

import pytest
import soundfile as sf
from conftest import run_main, tone

from kwsbatch.errors import ManifestError
from kwsbatch.files.manifest import check_known_labels, iter_manifest, read_manifest


@pytest.fixture
def clips(tmp_path) -> Path:
    """data/clips/{a,b,c}.wav: three short tones."""
    folder = tmp_path / "data" / "clips"
    folder.mkdir(parents=True)
    for name, freq in (("a", 300), ("b", 600), ("c", 900)):
        sf.write(folder / f"{name}.wav", tone(freq, 0.3), 16000)
    return folder


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def manifest_error(path: Path, **kwargs) -> str:
    with pytest.raises(ManifestError) as raised:
        read_manifest(path, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_relative_paths_resolve_against_the_manifests_folder(clips):
    manifest = write(clips.parent / "m.csv", f"path,label\nclips/a.wav,yes\n{clips / 'b.wav'},no\n")
    rows = read_manifest(manifest)
    assert [r.path for r in rows] == ["clips/a.wav", str(clips / "b.wav")]
    assert [r.audio_path for r in rows] == [clips / "a.wav", clips / "b.wav"]
    assert [r.label for r in rows] == ["yes", "no"]
    assert [r.source for r in rows] == [f"{manifest} line 2", f"{manifest} line 3"]


def test_extra_columns_are_carried_in_order(clips):
    manifest = write(clips / "m.csv", "speaker,path,label,notes\nv01,a.wav,yes,first take\nv02,b.wav,no,\n")
    rows = read_manifest(manifest)
    assert [r.extras for r in rows] == [{"speaker": "v01", "notes": "first take"}, {"speaker": "v02", "notes": ""}]
    assert list(rows[0].extras) == ["speaker", "notes"]


def test_a_manifest_without_labels_reads_when_labels_are_not_required(clips):
    rows = read_manifest(write(clips / "m.csv", "path\na.wav\nb.wav\n"))
    assert [(r.path, r.label) for r in rows] == [("a.wav", None), ("b.wav", None)]


def test_spreadsheet_quirks_bom_crlf_blank_lines_and_spaces(clips):
    text = "\ufeffpath , label\r\n\r\na.wav,yes \r\n  ,  \r\n\r\n\"b.wav\",\"no\"\r\n"
    manifest = write(clips / "m.csv", text)
    rows = read_manifest(manifest)
    assert [(r.path, r.label) for r in rows] == [("a.wav", "yes"), ("b.wav", "no")]
    assert [r.source for r in rows] == [f"{manifest} line 3", f"{manifest} line 6"]


def test_line_numbers_count_blank_lines(clips):
    manifest = write(clips / "m.csv", "path,label\n\na.wav,yes\n\n\nmissing.wav,no\n")
    assert manifest_error(manifest) == f"{manifest} line 6: file not found: missing.wav"


def test_missing_path_column_lists_what_was_found(clips):
    manifest = write(clips / "m.csv", "file,label\na.wav,yes\n")
    assert manifest_error(manifest) == f"{manifest}: no path column; expected one of path, audio_filepath, file_name, found: file, label"


def test_a_manifest_without_a_header_gets_a_hint(clips):
    manifest = write(clips / "m.csv", "a.wav,yes\nb.wav,no\n")
    assert manifest_error(manifest) == (
        f"{manifest}: no path column (the first line must be a header); expected one of path, audio_filepath, file_name, found: a.wav, yes"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"], ids=["empty", "blank-lines", "bom-only"])
def test_empty_manifest(clips, text):
    manifest = write(clips / "m.csv", text)
    assert manifest_error(manifest) == f"{manifest}: manifest is empty (expected a header line such as 'path,label')"


def test_header_only_manifest(clips):
    manifest = write(clips / "m.csv", "path,label\n\n")
    assert manifest_error(manifest) == f"{manifest}: manifest has no rows"


def test_missing_audio_file_names_manifest_and_line(clips):
    manifest = write(clips / "m.csv", "path,label\na.wav,yes\nnope.wav,no\n")
    assert manifest_error(manifest) == f"{manifest} line 3: file not found: nope.wav"
    assert len(read_manifest(manifest, check_exists=False)) == 2


def test_empty_label_when_labels_are_required(clips):
    manifest = write(clips / "m.csv", "path,label\na.wav,yes\nb.wav,  \n")
    assert manifest_error(manifest, require_label=True) == f"{manifest} line 3: empty label"
    assert read_manifest(manifest)[1].label is None


def test_no_label_column_when_labels_are_required(clips):
    manifest = write(clips / "m.csv", "path,speaker\na.wav,v1\n")
    assert manifest_error(manifest, require_label=True) == (
        f"{manifest}: no 'label' column in the header; this command needs the true labels"
    )


@pytest.mark.parametrize("row, found", [("a.wav,yes,extra", 3), ("a.wav", 1)])
def test_wrong_field_count(clips, row, found):
    manifest = write(clips / "m.csv", f"path,label\nb.wav,no\n{row}\n")
    assert manifest_error(manifest) == f"{manifest} line 3: expected 2 fields (path,label), found {found}"


def test_empty_path(clips):
    manifest = write(clips / "m.csv", "path,label\n,yes\n")
    assert manifest_error(manifest) == f"{manifest} line 2: empty path"


def test_duplicated_columns(clips):
    manifest = write(clips / "m.csv", "path,label,label\na.wav,yes,no\n")
    assert manifest_error(manifest) == f"{manifest}: duplicated column(s) in the header: label"


def test_non_utf8_text_is_refused(clips):
    manifest = write(clips / "m.csv", "path,label\na.wav,oui\nb.wav,caf\xe9\n", encoding="latin-1")
    message = manifest_error(manifest)
    assert message.startswith(f"{manifest} line ") and message.endswith("not UTF-8 text (byte 0xe9); save the manifest as UTF-8")


def test_non_utf8_far_into_a_long_manifest_names_a_line(clips):
    body = "".join(f"a.wav,yes{i}\n" for i in range(3000))
    manifest = write(clips / "m.csv", f"path,label\n{body}b.wav,caf\xe9\n", encoding="latin-1")
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(manifest))} line \d+: not UTF-8 text \(byte 0x[0-9a-f]{{2}}\)"):
        list(iter_manifest(manifest))


def test_utf8_labels_and_paths_survive(clips):
    (clips / "café.wav").write_bytes((clips / "a.wav").read_bytes())
    rows = read_manifest(write(clips / "m.csv", "path,label\ncafé.wav,sí\n"))
    assert (rows[0].path, rows[0].label, rows[0].audio_path.is_file()) == ("café.wav", "sí", True)


def test_missing_manifest_and_folder_as_manifest(tmp_path):
    assert manifest_error(tmp_path / "none.csv") == f"{tmp_path / 'none.csv'}: manifest not found"
    (tmp_path / "dir.csv").mkdir()
    assert manifest_error(tmp_path / "dir.csv") == f"{tmp_path / 'dir.csv'}: is a folder, not a manifest"


def test_unknown_label_names_the_row(clips):
    manifest = write(clips / "m.csv", "path,label\na.wav,yes\nb.wav,maybe\n")
    with pytest.raises(ManifestError) as raised:
        check_known_labels(read_manifest(manifest), ("no", "yes"))
    assert str(raised.value) == f"{manifest} line 3: label 'maybe' is not one the model knows (no, yes)"


def test_rows_are_streamed(clips):
    # A bad row late in a manifest does not stop the rows before it from being read.
    manifest = write(clips / "m.csv", "path,label\na.wav,yes\nb.wav,no\nbroken\n")
    rows = iter_manifest(manifest)
    assert [next(rows).path, next(rows).path] == ["a.wav", "b.wav"]
    with pytest.raises(ManifestError, match="line 4: expected 2 fields"):
        next(rows)


# Through the CLI: relative paths work from any working directory, errors name manifest and line.


def test_label_resolves_manifest_paths_from_another_working_directory(clips, tmp_path, trained_model):
    manifest = write(clips.parent / "m.csv", "path,label,speaker\nclips/a.wav,yes,v1\nclips/c.wav,no,v2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_main("label", manifest, "--model", trained_model, "-q", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    # Standard output names the files relative to the working directory: `> out.csv` there reads back as a manifest.
    assert [(r["path"], r["error"], r["true_label"], r["speaker"]) for r in table] == [
        (os.path.relpath(clips / "a.wav", elsewhere), "", "yes", "v1"),
        (os.path.relpath(clips / "c.wav", elsewhere), "", "no", "v2"),
    ]
    assert [r["duration_s"] for r in table] == ["0.300", "0.300"]


def test_evaluate_with_a_label_the_model_does_not_know(trained_model, speech_corpus, tmp_path):
    manifest = write(tmp_path / "m.csv", f"path,label\n{speech_corpus / 'yes/v00.wav'},yes\n{speech_corpus / 'no/v00.wav'},maybe\n")
    result = run_main("evaluate", manifest, "--model", trained_model, "-o", tmp_path / "report", "-q")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {manifest} line 3: label 'maybe' is not one the model knows (down, no, up, yes)"
    ]
    assert not (tmp_path / "report").exists()


def test_train_with_a_missing_clip_names_manifest_and_line(speech_corpus, tmp_path):
    manifest = write(tmp_path / "m.csv", f"path,label\n{speech_corpus / 'yes/v00.wav'},yes\ngone.wav,no\n")
    result = run_main("train", manifest, "-o", tmp_path / "run", "-q")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {manifest} line 3: file not found: gone.wav"]
    assert not (tmp_path / "run").exists()
