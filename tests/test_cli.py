"""The command line, driven through the real entry point: files written, exit codes, exact output."""

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import REPO, WORDS, run_main

from kwsbatch.cli import build_parser
from kwsbatch.files.manifest import ManifestRow, read_manifest
from kwsbatch.model.checkpoint import checkpoint_id, load_checkpoint
from kwsbatch.train.data import split_for_validation

CLASSES = sorted(WORDS)  # train sorts the manifest's labels
OWN_COLUMNS = [
    "path", "label", "confidence", *(f"p_{c}" for c in CLASSES), "duration_s", "sample_rate", "channels", "model", "error", "warning",
    "file_size", "file_mtime_ns",  # how a rerun tells a file changed
]
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Tiny but not trivial: two layers with dropout between them (so the random state matters), and a
# learning-rate step after epoch 3 (so the scheduler state matters when resuming after epoch 2).
TINY = ["--batch-size", "8", "--hidden", "16", "--layers", "2", "--dropout", "0.2", "--lr", "1e-2", "--lr-step", "3",
        "--val-fraction", "0.25", "--seed", "5"]


def read_csv(text_or_path) -> list[dict]:
    text = text_or_path.read_text() if isinstance(text_or_path, Path) else text_or_path
    return list(csv.DictReader(io.StringIO(text)))


def header(text: str) -> list[str]:
    return text.splitlines()[0].split(",")


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = state_dict(a), state_dict(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def without(rows: list[dict], *columns: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# train


@pytest.fixture(scope="module")
def runs(speech_corpus, tmp_path_factory) -> dict[str, Path]:
    """a and b: 4 epochs with the same seed; resumed: 2 epochs, then --resume to 4 (its log kept)."""
    root = tmp_path_factory.mktemp("runs")
    train = speech_corpus / "train.csv"
    for name in ("a", "b"):
        run_main("train", train, "-o", root / name, "--epochs", "4", *TINY, "-q", check=True)
    run_main("train", train, "-o", root / "resumed", "--epochs", "2", *TINY, "-q", check=True)
    shutil.copytree(root / "resumed", root / "after2")  # the interrupted run, kept for other tests
    resumed = run_main("train", train, "-o", root / "resumed", "--epochs", "4", "--resume", *TINY, check=True)
    (root / "resume.log").write_text(resumed.stderr)
    return {name: root / name for name in ("a", "b", "resumed", "after2")} | {"log": root / "resume.log"}


def test_train_writes_best_last_and_history(runs):
    run = runs["a"]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    text = (run / "history.csv").read_text()
    assert header(text) == HISTORY_COLUMNS
    history = read_csv(text)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in history] == [0.01, 0.01, 0.01, 0.005]
    for row in history:
        assert 0.0 <= float(row["train_accuracy"]) <= 1.0 and 0.0 <= float(row["val_accuracy"]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["val_loss"]) > 0
    best, last = (torch.load(run / n, weights_only=True) for n in ("best.pt", "last.pt"))
    assert best["classes"] == last["classes"] == CLASSES
    assert best["training_state"] is None and last["training_state"]["epoch"] == 4
    best_epoch = best["provenance"]["metrics"]["best_epoch"]
    assert max(float(r["val_accuracy"]) for r in history) == float(history[best_epoch - 1]["val_accuracy"])
    assert best["model_config"]["hidden"] == 16 and best["model_config"]["layers"] == 2


def test_same_seed_gives_identical_weights_and_labels(runs, speech_corpus, tmp_path):
    assert_same_weights(runs["a"] / "last.pt", runs["b"] / "last.pt")
    assert_same_weights(runs["a"] / "best.pt", runs["b"] / "best.pt")
    history_a, history_b = (read_csv(runs[n] / "history.csv") for n in ("a", "b"))
    assert without(history_a, "seconds") == without(history_b, "seconds")
    outputs = []
    for name in ("a", "b"):
        result = run_main("label", speech_corpus / "test.csv", "--model", runs[name] / "best.pt", "-q", check=True)
        outputs.append(read_csv(result.stdout))
    # Byte for byte, model column included: it hashes the weights, not the file's training date.
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 12


def test_resume_continues_from_last_as_if_never_interrupted(runs):
    history = read_csv(runs["resumed"] / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert without(history, "seconds") == without(read_csv(runs["a"] / "history.csv"), "seconds")
    assert_same_weights(runs["resumed"] / "last.pt", runs["a"] / "last.pt")
    assert_same_weights(runs["resumed"] / "best.pt", runs["a"] / "best.pt")
    # Off a terminal the log is plain lines, no progress bars and no blank lines between them.
    log = runs["log"].read_text().splitlines()
    # The default augmentation says what it does (without noise: this corpus has no noise folder).
    assert log[0].startswith("augmentation: ") and "BackgroundNoise" not in log[0]
    log = log[1:]
    assert log[0] == f"resuming {runs['resumed']} at epoch 3"
    assert [line.split()[:2] for line in log[1:3]] == [["epoch", "3/4"], ["epoch", "4/4"]]
    assert log[3].startswith("temperature ") and "fitted on validation" in log[3]
    assert log[4].startswith("best epoch ") and len(log) == 5


def test_resume_with_other_model_settings_is_refused(runs, speech_corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["after2"], run)
    settings = [a if a != "16" else "32" for a in TINY]  # --hidden 32 instead of 16
    result = run_main("train", speech_corpus / "train.csv", "-o", run, "--epochs", "4", "--resume", *settings, "-q")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith(f"error: {run / 'last.pt'}: ") and "hidden" in line
    assert len(read_csv(run / "history.csv")) == 2  # nothing was overwritten


def test_resume_before_any_epoch_finished_starts_over(speech_corpus, tmp_path):
    # A run killed while decoding leaves nothing behind: the same command with --resume just trains.
    result = run_main("train", speech_corpus / "train.csv", "-o", tmp_path / "new", "--epochs", "2", "--resume", *TINY)
    assert result.returncode == 0, result.stderr
    assert f"nothing to resume in {tmp_path / 'new'} (no epoch finished yet): starting at epoch 1" in result.stderr
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "new" / "history.csv")] == [1, 2]


def test_resume_with_a_history_but_no_last_checkpoint_is_an_error(speech_corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    result = run_main("train", speech_corpus / "train.csv", "-o", run, "--epochs", "2", "--resume", *TINY, "-q")
    assert result.returncode == 1
    assert one_error_line(result) == f"error: {run / 'last.pt'}: model file not found"


def test_without_val_the_split_is_by_speaker_whatever_the_row_order(runs, speech_corpus):
    rows = read_manifest(speech_corpus / "train.csv", require_label=True)
    train, val = split_for_validation(rows, 0.25)
    assert val and train
    assert {r.extras["speaker"] for r in train}.isdisjoint(r.extras["speaker"] for r in val)
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    assert {r.path for r in split_for_validation(shuffled, 0.25)[1]} == {r.path for r in val}
    for name in ("a", "b", "after2"):
        provenance = torch.load(runs[name] / "best.pt", weights_only=True)["provenance"]
        assert (provenance["n_train"], provenance["n_val"]) == (len(train), len(val))


def test_without_speakers_the_split_is_by_path():
    rows = [ManifestRow(f"m line {i}", f"clip{i:03d}.wav", Path(f"clip{i:03d}.wav"), "yes") for i in range(400)]
    train, val = split_for_validation(rows, 0.2)
    assert len(train) + len(val) == 400
    assert 50 <= len(val) <= 110  # a hash split: about a fifth
    assert split_for_validation(rows[::-1], 0.2)[1] == val[::-1]


# ---------------------------------------------------------------------------------------------
# label


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    return torchaudio.functional.resample(torch.from_numpy(samples), 16000, rate).numpy()


@pytest.fixture(scope="module")
def audio_tree(speech_corpus, tmp_path_factory) -> Path:
    """audio/: speech in several formats, rates and channel counts, two folders deep, plus non-audio files."""
    root = tmp_path_factory.mktemp("tree")
    audio = root / "audio"
    (audio / "sub" / "deeper").mkdir(parents=True)
    yes, no, up, down = (sf.read(speech_corpus / w / "v01.wav", dtype="float32")[0] for w in ("yes", "no", "up", "down"))
    sf.write(audio / "b_44k_stereo.wav", np.stack([_resampled(yes, 44100)] * 2, axis=1), 44100, subtype="PCM_16")
    sf.write(audio / "a_8k.flac", _resampled(no, 8000), 8000, subtype="PCM_24")
    sf.write(audio / "sub" / "c_22k.ogg", _resampled(up, 22050), 22050, format="OGG", subtype="VORBIS")
    quad = np.stack([_resampled(down, 48000)] * 4, axis=1)
    sf.write(audio / "sub" / "deeper" / "d_48k_quad.WAV", quad, 48000, subtype="FLOAT")
    (audio / "notes.txt").write_text("not audio")
    (audio / "sub" / "labels.csv").write_text("path,label\n")
    return root


@pytest.fixture(scope="module")
def folder_labels(trained_model, audio_tree):
    return run_main("label", "audio", "--model", trained_model, "-q", cwd=audio_tree)


def test_label_a_folder_recursively(folder_labels):
    result = folder_labels
    assert result.returncode == 0, result.stderr
    assert header(result.stdout) == OWN_COLUMNS
    rows = read_csv(result.stdout)
    # Each folder's files in sorted order, then its subfolders.
    assert [r["path"] for r in rows] == [
        "audio/a_8k.flac", "audio/b_44k_stereo.wav", "audio/sub/c_22k.ogg", "audio/sub/deeper/d_48k_quad.WAV",
    ]
    assert [(r["sample_rate"], r["channels"], r["duration_s"]) for r in rows] == [
        ("8000", "1", "1.000"), ("44100", "2", "1.000"), ("22050", "1", "1.000"), ("48000", "4", "1.000"),
    ]
    assert all(r["error"] == "" and r["label"] in CLASSES for r in rows)


def test_label_rows_are_consistent_probabilities(folder_labels, trained_model):
    rows = read_csv(folder_labels.stdout)
    assert len(rows) == 4
    model_id = checkpoint_id(load_checkpoint(trained_model))
    for row in rows:
        p = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == CLASSES[int(p.argmax())]
        assert float(row["confidence"]) == p.max()
        assert row["model"] == model_id


def test_label_a_manifest_carries_its_columns(trained_model, speech_corpus, tmp_path):
    out = tmp_path / "labels.csv"
    result = run_main("label", speech_corpus / "test.csv", "--model", trained_model, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert header(out.read_text()) == [*OWN_COLUMNS, "true_label", "speaker"]
    manifest = read_csv(speech_corpus / "test.csv")
    rows = read_csv(out)
    expected = [(os.path.relpath(speech_corpus / m["path"], tmp_path), m["label"], m["speaker"]) for m in manifest]  # relative to out
    assert [(r["path"], r["true_label"], r["speaker"]) for r in rows] == expected


def test_label_explicit_files_in_the_order_given(trained_model, speech_corpus):
    files = ["yes/v02.wav", "down/v05.wav", "yes/v02.wav", "no/v00.wav"]
    result = run_main("label", *files, "--model", trained_model, cwd=speech_corpus)
    assert result.returncode == 0, result.stderr
    assert header(result.stdout) == OWN_COLUMNS
    rows = read_csv(result.stdout)
    assert [r["path"] for r in rows] == files
    assert rows[0] == rows[2]
    assert "labelled 4 new or changed files (0 failed)" in result.stderr.splitlines()[-1]


def test_a_corrupt_file_gets_an_error_row_and_exit_3(trained_model, speech_corpus, tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, dtype=np.int16), 16000)
    good = [str(speech_corpus / "up" / "v04.wav"), str(speech_corpus / "no" / "v06.wav")]
    result = run_main("label", good[0], "corrupt.wav", "long.wav", good[1], "--model", trained_model, "--max-seconds", "2",
                     cwd=tmp_path)
    assert result.returncode == 3
    rows = read_csv(result.stdout)
    assert [r["path"] for r in rows] == [good[0], "corrupt.wav", "long.wav", good[1]]
    assert rows[1]["error"].startswith("corrupt.wav: cannot decode audio")
    assert rows[2]["error"] == "long.wav: 3.0 s is longer than the 2 s limit for a clip (label long recordings with --window)"
    for failed in rows[1:3]:
        assert all(failed[c] == "" for c in OWN_COLUMNS if c not in ("path", "model", "error", "file_size", "file_mtime_ns"))
    for ok in (rows[0], rows[3]):
        assert ok["error"] == "" and ok["label"] in CLASSES
    assert "labelled 4 new or changed files (2 failed)" in result.stderr.splitlines()[-1]


def test_jobs_2_writes_the_same_csv_as_jobs_1(trained_model, speech_corpus, audio_tree, tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all")
    inputs = [speech_corpus / "train.csv", audio_tree / "audio", tmp_path / "corrupt.wav"]
    results = [
        run_main("label", *inputs, "--model", trained_model, "--batch-size", "5", "-j", jobs, "-q") for jobs in ("1", "2")
    ]
    assert [r.returncode for r in results] == [3, 3]
    assert results[0].stdout == results[1].stdout
    assert len(read_csv(results[0].stdout)) == 36 + 4 + 1


def test_label_a_missing_input_is_one_error_line(trained_model, tmp_path):
    result = run_main("label", "nothing.wav", "--model", trained_model, "-o", "out.csv", cwd=tmp_path)
    assert result.returncode == 1
    assert one_error_line(result) == "error: nothing.wav: no such file or folder"
    assert list(tmp_path.iterdir()) == []  # no output, not even a temporary file


# ---------------------------------------------------------------------------------------------
# evaluate


@pytest.fixture(scope="module")
def evaluated(trained_model, speech_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    result = run_main("evaluate", speech_corpus / "test.csv", "--model", trained_model, "-o", out, "-q")
    return result, out


def test_evaluate_writes_the_report_files_and_prints_tables(evaluated):
    result, out = evaluated
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "per_class.csv", "confusion.csv", "predictions.csv", "misclassified.csv", "confusion.png", "threshold_sweep.csv"]
    )
    assert (out / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    for table in ("Evaluation", "Per class", "Confusion", "accuracy", "macro F1", *CLASSES):
        assert table in result.stdout
    assert f"report written to {out}" in result.stderr


def test_evaluate_report_agrees_with_its_predictions(evaluated):
    _, out = evaluated
    report = json.loads((out / "report.json").read_text())
    predictions = read_csv(out / "predictions.csv")
    correct = sum(r["label"] == r["true_label"] for r in predictions)
    assert len(predictions) == report["n_scored"] == 12
    assert report["accuracy"] == pytest.approx(correct / 12, abs=1e-6)
    assert report["labels"] == CLASSES
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 12 and np.trace(confusion) == correct
    assert len(read_csv(out / "misclassified.csv")) == 12 - correct
    per_class = read_csv(out / "per_class.csv")
    assert [(r["label"], r["support"]) for r in per_class] == [(c, "3") for c in CLASSES]
    # Every class here is a keyword: recall over all of them, and no background class to mistake.
    assert report["keyword_recall"] == pytest.approx(correct / 12, abs=1e-6)
    assert report["tagged_as_keyword"] == {}


def test_evaluate_predictions_scores_an_existing_csv_without_a_model(evaluated, trained_model, speech_corpus, tmp_path):
    _, model_report = evaluated
    by_model = json.loads((model_report / "report.json").read_text())
    labels = tmp_path / "labels.csv"
    run_main("label", speech_corpus / "test.csv", "--model", trained_model, "-o", labels, "-q", check=True)
    # An accuracy equal to --min-accuracy passes: the gate is "below", not "at or below". The exact
    # accuracy, from the confusion matrix: the report rounds it (11/12 to 0.916667, above 11/12).
    exact = np.trace(by_model["confusion"]) / by_model["n_scored"]
    result = run_main("evaluate", speech_corpus / "test.csv", "--predictions", labels, "-o", tmp_path / "r",
                      "--min-accuracy", repr(float(exact)), "-q")
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "r" / "report.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "n_scored", "confusion"):
        assert scored[key] == by_model[key], key
    assert "model_id" not in scored["model"]  # no model was run


def test_min_accuracy_above_the_accuracy_exits_3(evaluated, speech_corpus, tmp_path):
    predictions = evaluated[1] / "predictions.csv"
    result = run_main("evaluate", speech_corpus / "test.csv", "--predictions", predictions, "-o", tmp_path / "a",
                     "--min-accuracy", "1.01", "-q")
    assert result.returncode == 3
    assert "is below --min-accuracy 101.00%" in result.stderr
    assert (tmp_path / "a" / "report.json").is_file()  # the report is still written


# ---------------------------------------------------------------------------------------------
# help, usage, docs


def subcommands() -> list[str]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_the_core_subcommands_exist():
    assert {"train", "label", "evaluate"} <= set(subcommands())


def subparser(command: str) -> argparse.ArgumentParser:
    (action,) = [a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices[command]


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help_with_examples_and_defaults(command):
    result = run_main(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: kwsbatch {command}")
    examples = result.stdout.split("\nexamples:\n", 1)[1]
    assert examples.count(f"kwsbatch {command}") >= 1
    parser = subparser(command)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = formatter._get_help_string(action)
        assert text, f"{command} {action.option_strings[-1]} has no help"
        # A switch is off unless given, a required option has no default; every other option says what it is when not given.
        assert action.nargs == 0 or action.required or "default" in text, f"{command} {action.option_strings[-1]}: no default in {text!r}"


def test_no_flag_means_two_things():
    meanings: dict[str, set] = {}
    for command in subcommands():
        for action in subparser(command)._actions:
            kind = (action.dest, type(action).__name__, getattr(action.type, "__name__", None), tuple(action.choices or ()))
            for flag in action.option_strings:
                meanings.setdefault(flag, set()).add(kind)
    assert {flag: kinds for flag, kinds in meanings.items() if len(kinds) > 1} == {}
    assert "--format" not in meanings  # the manifest's format, the output's or the model's: each says which


def test_jobs_is_the_same_option_in_every_command():
    jobs = {command: (a.default, a.help) for command in subcommands() for a in subparser(command)._actions if "-j" in a.option_strings}
    assert {"label", "evaluate", "train", "check", "bench", "synth"} <= set(jobs)
    assert {default for default, _ in jobs.values()} == {0}  # 0: one per core, everywhere
    readers = {text for command, (_, text) in jobs.items() if command != "synth"}
    assert len(readers) == 1 and "load and decode" in readers.pop()  # loader workers wherever audio is read
    assert "rendered" in jobs["synth"][1]  # synth's are TTS renders, and its help says so


def test_a_label_run_that_finds_its_output_locked_stops_before_torch_loads(tmp_path):
    # A fresh process, to see what it imported: the cron run that finds another one writing stops at once.
    program = (
        "import sys\nfrom kwsbatch.cli import main\nfrom kwsbatch.files.lock import output_lock\n"
        "with output_lock('out.csv'):\n"
        "    import subprocess\n"
        "    code = subprocess.run([sys.executable, '-c', 'import sys; from kwsbatch.cli import main; code = main(sys.argv[1:]); "
        "print(code, sorted(m for m in (\\'torch\\', \\'numpy\\') if m in sys.modules))', 'label', 'clips', '-o', 'out.csv']).returncode\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "75 []", result.stderr
    assert "another kwsbatch run is writing it" in result.stderr


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in subcommands())], ids=" ".join)
def test_help_is_printed_without_loading_torch_or_pandas(argv):
    # A fresh process, to see what it imported: a newcomer's `kwsbatch train --help` answers at once,
    # not after the seconds torch takes to import.
    program = (
        "import sys\nfrom kwsbatch.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("usage: kwsbatch")
    assert result.stderr.strip() == "[]"


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_a_reference_section_and_a_readme_example(command):
    reference = (REPO / "docs" / "commands.md").read_text()
    assert re.search(rf"^#+ +{command}\b", reference, re.MULTILINE), f"docs/commands.md has no section for `{command}`"
    assert f"kwsbatch {command}" in reference
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"^kwsbatch {command} ", readme, re.MULTILINE), f"README.md has no example of `kwsbatch {command}`"


def test_usage_errors_exit_2(tmp_path):
    assert run_main(cwd=tmp_path).returncode == 2
    assert run_main("label", cwd=tmp_path).returncode == 2  # INPUT is required
    assert run_main("train", "m.csv", "--epochs", "many", cwd=tmp_path).returncode == 2


def test_version():
    result = run_main("--version")
    assert result.returncode == 0 and re.fullmatch(r"kwsbatch \d+\.\d+\.\d+\n", result.stdout)


# ---------------------------------------------------------------------------------------------
# end to end: espeak-ng speech -> train -> label the held-out voices -> evaluate


@pytest.mark.slow
def test_train_label_evaluate_end_to_end(speech_corpus, tmp_path):
    run, labels = tmp_path / "run", tmp_path / "labels.csv"
    run_main(
        "train", speech_corpus / "train.csv", "-o", run, "--epochs", "30", "--batch-size", "8", "--hidden", "48",
        "--layers", "2", "--pooling", "mean", "--lr", "5e-3", "--lr-step", "10", "--val-fraction", "0.25", "--seed", "0",
        "-q", check=True,
    )
    run_main("label", speech_corpus / "test.csv", "--model", run / "best.pt", "-o", labels, "-q", check=True)
    rows = read_csv(labels)
    accuracy = np.mean([r["label"] == r["true_label"] for r in rows])
    # Held-out voices, 4 classes (chance 0.25). Measured 11/12 for seeds 0-3; 0.75 allows two more misses.
    assert len(rows) == 12 and accuracy >= 0.75
    result = run_main("evaluate", speech_corpus / "test.csv", "--model", run / "best.pt", "-o", tmp_path / "report",
                     "--min-accuracy", "0.75", "-q")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "report" / "report.json").read_text())["accuracy"] == pytest.approx(accuracy, abs=1e-6)
