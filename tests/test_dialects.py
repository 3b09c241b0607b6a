"""Manifest formats (dialects.py, manifest.py): NeMo JSON lines, Hugging Face audiofolder, TSV, column aliases.

Each format is written from the same rows as a CSV manifest and must read, label, evaluate and
train exactly as that CSV does.
"""

import csv
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_main

from kwsbatch.errors import ManifestError
from kwsbatch.files.manifest import iter_inputs, iter_manifest, manifest_header, read_manifest


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_jsonl(path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_delimited(path, rows: list[dict], delimiter: str = ",") -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def dialect_manifests(corpus, split: str, folder) -> dict[str, object]:
    """The split's CSV manifest, and the same rows as NeMo JSON lines, TSV, an aliased CSV and audiofolder metadata."""
    rows = csv_rows(corpus / f"{split}.csv")
    # Manifests in another folder, so their relative paths differ from the CSV's and must resolve against each file.
    prefix = os.path.relpath(corpus, folder) + "/"
    out = {"csv": corpus / f"{split}.csv"}
    out["jsonl"] = folder / f"{split}_manifest.json"
    write_jsonl(out["jsonl"], [{"audio_filepath": prefix + r["path"], "duration": 1.0, "command": r["label"], "speaker": r["speaker"]} for r in rows])
    out["tsv"] = folder / f"{split}.tsv"
    write_delimited(out["tsv"], [{"path": prefix + r["path"], "label": r["label"], "speaker": r["speaker"]} for r in rows], "\t")
    out["aliased"] = folder / f"{split}_aliased.csv"
    write_delimited(out["aliased"], [{"speaker": r["speaker"], "audio_filepath": prefix + r["path"], "label": r["label"]} for r in rows])
    # Hugging Face audiofolder metadata without a label column: the labels are the class folders.
    out["audiofolder"] = folder / f"{split}_hf" / "metadata.csv"
    out["audiofolder"].parent.mkdir()
    write_delimited(out["audiofolder"], [{"file_name": "../" + prefix + r["path"], "speaker": r["speaker"]} for r in rows])
    return out


@pytest.fixture(scope="module")
def manifests(speech_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dialects")
    return {split: dialect_manifests(speech_corpus, split, folder) for split in ("train", "test")}


@pytest.mark.parametrize("dialect", ["jsonl", "tsv", "aliased", "audiofolder"])
def test_every_dialect_reads_as_the_csv_does(manifests, dialect):
    expected = read_manifest(manifests["test"]["csv"], require_label=True)
    got = read_manifest(manifests["test"][dialect], require_label=True)
    assert [r.audio_path.resolve() for r in got] == [r.audio_path.resolve() for r in expected]
    assert [r.label for r in got] == [r.label for r in expected]
    assert [r.extras["speaker"] for r in got] == [r.extras["speaker"] for r in expected]
    assert all(r.offset_s is None and r.duration_s is None for r in got)


def test_headers_name_the_path_and_label_columns_as_kwsbatch_does(manifests):
    test = manifests["test"]
    assert manifest_header(test["csv"]) == ["path", "label", "speaker"]
    assert manifest_header(test["jsonl"]) == ["path", "duration", "label", "speaker"]
    assert manifest_header(test["tsv"]) == ["path", "label", "speaker"]
    assert manifest_header(test["aliased"]) == ["speaker", "path", "label"]
    assert manifest_header(test["audiofolder"]) == ["path", "speaker", "label"]


def test_label_gives_every_dialect_the_csv_predictions(manifests, trained_model, tmp_path):
    """One run over all five manifests: rows come out in input order, each block as the CSV's.

    Standard output gets one row per input row; `-o FILE` would keep one row per path.
    """
    test = manifests["test"]
    order = ["csv", "jsonl", "tsv", "aliased", "audiofolder"]
    result = run_main("label", *(test[d] for d in order), "--model", trained_model, "-q")
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout), dtype=str, keep_default_na=False)
    n = len(csv_rows(test["csv"]))
    assert len(out) == 5 * n
    blocks = [out.iloc[i * n : (i + 1) * n].reset_index(drop=True) for i in range(5)]
    compared = ["label", "confidence", "p_down", "p_no", "p_up", "p_yes", "true_label", "speaker", "duration_s"]
    for dialect, block in zip(order[1:], blocks[1:]):
        pd.testing.assert_frame_equal(block[compared], blocks[0][compared], obj=dialect)
    assert set(blocks[1]["duration"]) == {"1.0"}  # NeMo's duration, carried through
    assert list(out.columns[-3:]) == ["true_label", "speaker", "duration"]


def test_evaluate_scores_nemo_and_audiofolder_manifests_as_the_csv(manifests, trained_model, tmp_path):
    reports = {}
    for name in ("csv", "jsonl", "audiofolder"):
        result = run_main("evaluate", manifests["test"][name], "--model", trained_model, "-o", tmp_path / name, "-q")
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    for name in ("jsonl", "audiofolder"):
        assert reports[name]["accuracy"] == reports["csv"]["accuracy"]
        for table in ("per_class.csv", "confusion.csv"):
            assert (tmp_path / name / table).read_text() == (tmp_path / "csv" / table).read_text()


@pytest.mark.slow
def test_training_on_nemo_json_lines_gives_the_weights_training_on_csv_gives(manifests, tmp_path):
    import torch

    runs = {}
    for name in ("csv", "jsonl"):
        runs[name] = tmp_path / name
        run_main(
            "train", manifests["train"][name], "--val", manifests["test"][name], "-o", runs[name], "--epochs", "2",
            "--batch-size", "8", "--hidden", "8", "--layers", "1", "-q", check=True,
        )
    weights = {name: torch.load(run / "last.pt", weights_only=True)["state_dict"] for name, run in runs.items()}
    assert weights["csv"].keys() == weights["jsonl"].keys()
    for key in weights["csv"]:
        assert torch.equal(weights["csv"][key], weights["jsonl"][key]), key
    history = {name: pd.read_csv(run / "history.csv") for name, run in runs.items()}
    assert list(history["jsonl"]["val_accuracy"]) == list(history["csv"]["val_accuracy"])


def test_manifest_format_flag_reads_a_file_whose_name_does_not_say(manifests, trained_model, tmp_path):
    listing = tmp_path / "clips.txt"
    listing.write_text(manifests["test"]["tsv"].read_text())
    result = run_main("evaluate", listing, "--model", trained_model, "-o", tmp_path / "report", "-q")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {listing}: cannot tell the manifest format from the name; use a .csv, .tsv or .jsonl extension "
        "or pass --manifest-format (csv, tsv, jsonl, audiofolder)\n"
    )
    # Beside the TSV, whose relative paths it holds.
    listing = manifests["test"]["tsv"].with_suffix(".txt")
    listing.write_text(manifests["test"]["tsv"].read_text())
    result = run_main("evaluate", listing, "--manifest-format", "tsv", "--model", trained_model, "-o", tmp_path / "report", "-q")
    assert result.returncode == 0, result.stderr
    result = run_main("label", listing, "--manifest-format", "tsv", "--model", trained_model, "-q")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 + len(csv_rows(manifests["test"]["csv"]))


@pytest.mark.parametrize("command", ["train", "evaluate", "label"])
def test_every_reading_command_takes_manifest_format(command):
    from kwsbatch.cli import build_parser

    args = build_parser().parse_args([command, "m.txt", "--manifest-format", "jsonl"])
    assert args.manifest_format == "jsonl"


# --- NeMo segments: offset and duration ------------------------------------------------------


@pytest.fixture(scope="module")
def long_recording(speech_corpus, tmp_path_factory):
    """Four 1 s test clips in one 16-bit WAV, each after 0.5 s of silence, and the clips they came from."""
    folder = tmp_path_factory.mktemp("long")
    clips = ["yes/v03.wav", "no/v07.wav", "up/v11.wav", "down/v03.wav"]
    gap = np.zeros(8000, dtype=np.int16)
    parts = []
    for clip in clips:
        parts += [gap, sf.read(speech_corpus / clip, dtype="int16")[0]]
    sf.write(folder / "session.wav", np.concatenate(parts), 16000, subtype="PCM_16")
    return folder, [speech_corpus / c for c in clips]


def test_offset_and_duration_label_each_segment_as_its_own_clip(long_recording, trained_model, tmp_path):
    folder, clips = long_recording
    write_jsonl(
        folder / "segments.jsonl",
        [{"audio_filepath": "session.wav", "offset": 0.5 + 1.5 * i, "duration": 1.0, "label": c.parent.name} for i, c in enumerate(clips)],
    )
    segments = run_main("label", folder / "segments.jsonl", "--model", trained_model, "-o", tmp_path / "segments.csv", "-q")
    assert segments.returncode == 0, segments.stderr
    separate = run_main("label", *clips, "--model", trained_model, "-o", tmp_path / "separate.csv", "-q", check=True)
    assert separate.returncode == 0
    got = pd.read_csv(tmp_path / "segments.csv", dtype=str, keep_default_na=False)
    expected = pd.read_csv(tmp_path / "separate.csv", dtype=str, keep_default_na=False)
    columns = ["label", "confidence", "p_down", "p_no", "p_up", "p_yes", "duration_s"]
    pd.testing.assert_frame_equal(got[columns], expected[columns])
    assert list(got["path"]) == [os.path.relpath(folder / "session.wav", tmp_path)] * 4  # relative to the output's folder
    assert list(got["offset"]) == ["0.5", "2.0", "3.5", "5.0"]
    assert set(got["duration_s"]) == {"1.000"}


def test_evaluate_predictions_matches_each_segment_to_its_own_row(long_recording, trained_model, tmp_path):
    folder, clips = long_recording
    manifest = folder / "scored.jsonl"
    write_jsonl(
        manifest,
        [{"audio_filepath": "session.wav", "offset": 0.5 + 1.5 * i, "duration": 1.0, "label": c.parent.name} for i, c in enumerate(clips)],
    )
    run_main("label", manifest, "--model", trained_model, "-o", tmp_path / "segments.csv", "-q", check=True)
    by_model = run_main("evaluate", manifest, "--model", trained_model, "-o", tmp_path / "by-model", "-q", check=True)
    scored = run_main("evaluate", manifest, "--predictions", tmp_path / "segments.csv", "-o", tmp_path / "scored", "-q")
    assert scored.returncode == 0, scored.stderr
    report = json.loads((tmp_path / "scored" / "report.json").read_text())
    assert report["n_scored"] == 4
    assert report["confusion"] == json.loads((tmp_path / "by-model" / "report.json").read_text())["confusion"]
    predictions = pd.read_csv(tmp_path / "scored" / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(predictions["offset"]) == ["0.5", "2.0", "3.5", "5.0"]  # each segment its own prediction
    assert by_model.returncode == 0


def test_segments_past_the_end_are_cut_or_fail_their_row(long_recording, trained_model, tmp_path):
    folder, _ = long_recording
    write_jsonl(
        folder / "edges.jsonl",
        [
            {"audio_filepath": "session.wav", "offset": 5.5, "duration": 2.0},  # runs 0.5 s past the end: cut short
            {"audio_filepath": "session.wav", "offset": 6.5},  # starts at the end
            {"audio_filepath": "session.wav", "offset": 5.0},  # to the end
        ],
    )
    result = run_main("label", folder / "edges.jsonl", "--model", trained_model, "-o", tmp_path / "edges.csv", "-q")
    assert result.returncode == 3
    out = pd.read_csv(tmp_path / "edges.csv", dtype=str, keep_default_na=False)
    assert list(out["duration_s"]) == ["0.500", "", "1.000"]
    assert out["error"][1] == f"{folder / 'session.wav'}: offset 6.5 s is past the end of the file (6.000 s)"


def test_segment_length_not_file_length_meets_the_clip_limit(long_recording, trained_model, tmp_path):
    folder, _ = long_recording
    write_jsonl(folder / "limit.jsonl", [{"audio_filepath": "session.wav", "offset": 0}, {"audio_filepath": "session.wav", "offset": 0, "duration": 2}])
    result = run_main("label", folder / "limit.jsonl", "--model", trained_model, "--max-seconds", "3", "-o", tmp_path / "o.csv", "-q")
    out = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
    assert result.returncode == 3
    assert out["error"][0] == f"{folder / 'session.wav'}: 6.0 s is longer than the 3 s limit for a clip (label long recordings with --window)"
    assert (out["error"][1], out["duration_s"][1]) == ("", "2.000")


# --- one-line errors naming the file and line ------------------------------------------------


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes"}\n{"audio_filepath": "b.wav" "label": "no"}\n',
         "line 2: not valid JSON (Expecting ',' delimiter)"),
        ("m.json", '[{"audio_filepath": "a.wav"}]\n',
         "line 1: expected a JSON object, found list; kwsbatch reads JSON lines, one object per line, not a JSON array"),
        ("m.json", '\n[\n  {"audio_filepath": "a.wav"}\n]\n',
         "line 2: not valid JSON (Expecting value); kwsbatch reads JSON lines, one object per line, not a JSON array"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes"}\n["a.wav", "yes"]\n', "line 2: expected a JSON object, found list"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes"}\n{"file": "b.wav", "label": "no"}\n',
         "line 2: no path (expected a field named path, audio_filepath, file_name)"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "path": "b.wav", "label": "no"}\n', "line 1: 'path' and 'audio_filepath' both name the audio file; keep one"),
        ("m.jsonl", '{"audio_filepath": "a.wav"}\n', "line 1: no label"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "command": " "}\n', "line 1: empty label"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes", "offset": "soon"}\n', "line 1: offset 'soon' is not a number of seconds"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes", "offset": 1, "duration": 0}\n', "line 1: duration must be more than 0 seconds, got 0"),
        ("m.jsonl", '{"audio_filepath": "a.wav", "label": "yes", "offset": -1}\n', "line 1: offset must be at least 0 seconds, got -1"),
        ("m.tsv", "path\tlabel\na.wav\tyes\textra\n", "line 2: expected 2 fields (path\\tlabel), found 3"),
        ("m.csv", "file_name,path,label\na.wav,a.wav,yes\n", "columns 'file_name' and 'path' both name the audio file; keep one"),
        ("metadata.csv", "file_name,speaker\nclip.wav,alice\n", "line 2: empty label and no class folder"),
    ],
)
def test_malformed_manifests_fail_with_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError) as error:
        list(iter_manifest(tmp_path / name, require_label=True))
    separator = " " if message.startswith("line") else ": "
    assert str(error.value) == f"{tmp_path / name}{separator}{message}"


def test_a_manifest_error_reaches_the_cli_as_one_line(tmp_path, trained_model):
    (tmp_path / "train.jsonl").write_text('{"audio_filepath": "a.wav", "label": "yes"}\n{oops}\n')
    result = run_main("train", tmp_path / "train.jsonl", "-o", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'train.jsonl'} line 2: not valid JSON (")
    assert result.stderr.count("\n") == 1


def test_json_values_become_text_and_blank_lines_are_skipped(tmp_path):
    (tmp_path / "a.wav").touch()
    (tmp_path / "m.jsonl").write_text(
        '\ufeff{"audio_filepath": "a.wav", "label": "yes", "n": 3, "ok": true, "tags": ["x", "y"], "note": null, "text": "héllo"}\n\n'
        '{"audio_filepath": "/abs/b.wav", "label": "no"}\n'
    )
    rows = list(iter_manifest(tmp_path / "m.jsonl"))
    assert rows[0].extras == {"n": "3", "ok": "true", "tags": '["x","y"]', "note": "", "text": "héllo"}
    assert (rows[0].audio_path, rows[0].source) == (tmp_path / "a.wav", f"{tmp_path / 'm.jsonl'} line 1")
    assert (str(rows[1].audio_path), rows[1].source) == ("/abs/b.wav", f"{tmp_path / 'm.jsonl'} line 3")
    assert manifest_header(tmp_path / "m.jsonl") == ["path", "label", "n", "ok", "tags", "note", "text"]


def test_audiofolder_prefers_the_label_column_over_the_folder(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label\nyes/a.wav,no\nyes/b.wav,\nc.wav,up\n")
    assert [r.label for r in iter_manifest(tmp_path / "metadata.csv")] == ["no", "yes", "up"]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "left/a.wav"}\n')
    assert [r.label for r in iter_manifest(tmp_path / "metadata.jsonl")] == ["left"]


def test_label_inputs_take_every_manifest_extension(tmp_path):
    for name, text in [("a.csv", "path\nx.wav\n"), ("b.tsv", "path\ny.wav\n"), ("c.jsonl", '{"path": "z.wav"}\n'), ("d.json", '{"file_name": "w.wav"}\n')]:
        (tmp_path / name).write_text(text)
    rows = list(iter_inputs([str(tmp_path / n) for n in ("a.csv", "b.tsv", "c.jsonl", "d.json")]))
    assert [r.path for r in rows] == ["x.wav", "y.wav", "z.wav", "w.wav"]


def test_an_audiofolder_is_read_by_its_folder_as_by_its_metadata(manifests, trained_model, tmp_path):
    metadata = manifests["test"]["audiofolder"]
    by_file, by_folder = (run_main("label", given, "--model", trained_model, "-q", check=True).stdout for given in (metadata, metadata.parent))
    assert by_folder == by_file
    assert by_folder.splitlines()[0].split(",")[:2] == ["file_name", "pred_label"]  # CSV out: the audiofolder's names
    for name, given in (("file", metadata), ("folder", metadata.parent)):
        run_main("evaluate", given, "--model", trained_model, "-o", tmp_path / name, "-q", check=True)
    assert (tmp_path / "folder" / "predictions.csv").read_text() == (tmp_path / "file" / "predictions.csv").read_text()


def test_nemo_json_lines_come_back_in_nemo_names_and_read_back_as_the_same_segments(tmp_path):
    """NeMo in, JSON lines out: audio_filepath, the truth under its own name, duration and offset as
    numbers, the model's label as pred_label; labelling that output again gives it back."""
    from conftest import REPO

    samples = REPO / "kwsbatch" / "assets" / "samples"
    data = tmp_path / "data"
    data.mkdir()
    for name in ("yes_0.wav", "no_0.wav"):
        (data / name).write_bytes((samples / name).read_bytes())
    write_jsonl(data / "manifest.json", [{"audio_filepath": "yes_0.wav", "duration": 1.0, "label": "yes"},
                                         {"audio_filepath": "no_0.wav", "duration": 0.5, "offset": 0.25, "label": "no"}])
    (tmp_path / "out").mkdir()
    run_main("label", data / "manifest.json", "-o", tmp_path / "out" / "labels.jsonl", "-q", check=True)
    lines = [json.loads(line) for line in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    assert [(r["audio_filepath"], r["label"], r["duration"], r["offset"]) for r in lines] == [
        ("../data/yes_0.wav", "yes", 1.0, None), ("../data/no_0.wav", "no", 0.5, 0.25)]
    assert all(r["pred_label"] and "path" not in r and "true_label" not in r for r in lines)
    back = read_manifest(tmp_path / "out" / "labels.jsonl", require_label=True)
    first = read_manifest(data / "manifest.json", require_label=True)
    assert [(r.audio_path.resolve(), r.label, r.offset_s, r.duration_s) for r in back] == [
        (r.audio_path.resolve(), r.label, r.offset_s, r.duration_s) for r in first]
    run_main("label", tmp_path / "out" / "labels.jsonl", "-o", tmp_path / "out" / "again.jsonl", "-q", check=True)
    assert (tmp_path / "out" / "again.jsonl").read_text() == (tmp_path / "out" / "labels.jsonl").read_text()
    # Another format than the dialect's: kwsbatch's own names.
    run_main("label", data / "manifest.json", "-o", tmp_path / "out" / "labels.csv", "-q", check=True)
    assert csv_rows(tmp_path / "out" / "labels.csv")[0]["path"] == "../data/yes_0.wav"


def test_an_audiofolder_comes_back_as_file_name_in_csv_and_reads_back_as_the_same_files(tmp_path):
    from conftest import REPO

    samples = REPO / "kwsbatch" / "assets" / "samples"
    folder = tmp_path / "hf"
    for name in ("yes_0.wav", "yes_1.flac", "no_0.wav"):
        (folder / name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (folder / name.split("_")[0] / name).write_bytes((samples / name).read_bytes())
    write_delimited(folder / "metadata.csv", [{"file_name": "yes/yes_0.wav", "speaker": "a"},
                                              {"file_name": "yes/yes_1.flac", "speaker": "b"},
                                              {"file_name": "no/no_0.wav", "speaker": "a"}])
    run_main("label", folder, "-o", tmp_path / "labels.csv", "-q", check=True)
    rows = csv_rows(tmp_path / "labels.csv")
    assert list(rows[0])[:2] == ["file_name", "pred_label"] and "path" not in rows[0] and "true_label" not in rows[0]
    assert [(r["file_name"], r["label"], r["speaker"]) for r in rows] == [
        ("hf/yes/yes_0.wav", "yes", "a"), ("hf/yes/yes_1.flac", "yes", "b"), ("hf/no/no_0.wav", "no", "a")]
    back = read_manifest(tmp_path / "labels.csv", require_label=True)
    first = read_manifest(folder, require_label=True)
    assert [(r.audio_path.resolve(), r.label, r.extras) for r in back] == [(r.audio_path.resolve(), r.label, r.extras) for r in first]
    run_main("label", tmp_path / "labels.csv", "-o", tmp_path / "again.csv", "-q", check=True)
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "labels.csv").read_text()
