"""Folder-per-label trees (tree.py, manifest.py's iter_tree) through the CLI: train, evaluate and label read them."""

import csv
import json
import shutil

import pytest
import soundfile as sf
from conftest import run_main, tone
from sc_tree import make_tree

from kwsbatch.model.checkpoint import load_checkpoint

WORDS = ("no", "up", "yes")
TINY = ("--epochs", "1", "--batch-size", "8", "--hidden", "16", "--layers", "1", "-q")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A Speech Commands tree with its list files: 4 train, 2 validation and 2 test speakers, 2 clips each per word."""
    root = tmp_path_factory.mktemp("tree") / "sc"
    speakers = make_tree(root, words=WORDS)
    for name, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
        listed = [f"{w}/{s}_nohash_{n}.wav" for w in WORDS for s in speakers[split] for n in range(2)]
        (root / name).write_text("".join(line + "\n" for line in listed))
    return root, speakers


@pytest.fixture(scope="module")
def tree_run(tree, tmp_path_factory):
    root, _ = tree
    run = tmp_path_factory.mktemp("runs") / "run"
    return run, run_main("train", root, "-o", run, *TINY)


def test_train_on_a_speech_commands_tree_follows_its_split_lists(tree, tree_run):
    root, _ = tree
    run, result = tree_run
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint.classes == WORDS  # the first folder under the root; _background_noise_ is no class
    provenance = checkpoint.provenance
    # Training: the clips in neither list (4 speakers x 2); validation: validation_list.txt (2 x 2).
    assert (provenance["n_train"], provenance["n_val"]) == (3 * 4 * 2, 3 * 2 * 2)
    assert (provenance["train_manifest"], provenance["val_manifest"]) == ("sc", None)
    assert len(provenance["train_manifest_sha256"]) == 64
    # The default augmentation's background noise comes from the tree's own _background_noise_.
    assert provenance["noise_files"] == ["tones.wav", "tones_short.wav"]


def test_evaluate_scores_a_trees_test_list_and_label_skips_its_noise(tree, tree_run, tmp_path):
    root, speakers = tree
    model = tree_run[0] / "best.pt"
    result = run_main("evaluate", root, "--model", model, "-o", tmp_path / "report", "-q")
    assert result.returncode == 0, result.stderr
    predictions = read_csv(tmp_path / "report" / "predictions.csv")
    listed = (root / "testing_list.txt").read_text().split()
    assert sorted(r["path"] for r in predictions) == sorted(str(root / line) for line in listed)
    assert {r["speaker"] for r in predictions} == set(speakers["test"])
    assert {r["true_label"] for r in predictions} == set(WORDS)
    # label reads every clip of the tree but not its noise recordings; evaluate matches its rows by path.
    labels = tmp_path / "labels.csv"
    run_main("label", root, "--model", model, "-o", labels, "-q", check=True)
    rows = read_csv(labels)
    assert len(rows) == 3 * 8 * 2 and not any("_background_noise_" in r["path"] for r in rows)
    again = run_main("evaluate", root, "--predictions", labels, "-o", tmp_path / "again", "-q")
    assert again.returncode == 0, again.stderr
    report, scored = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("report", "again"))
    assert (scored["n_scored"], scored["confusion"]) == (report["n_scored"], report["confusion"])


def test_a_tree_without_split_lists_is_evaluated_whole(speech_corpus, trained_model, tmp_path):
    # The speech corpus is a tree too (<word>/vNN.wav, with its CSV manifests beside the folders).
    result = run_main("evaluate", speech_corpus, "--model", trained_model, "-o", tmp_path, "-q")
    assert result.returncode == 0, result.stderr
    predictions = read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == 48 and {r["true_label"] for r in predictions} == {"down", "no", "up", "yes"}


def test_a_clip_outside_any_label_folder_is_a_one_line_error(tmp_path, trained_model):
    for name in ("yes/a.wav", "stray.wav"):
        (tmp_path / "t" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "t" / name, tone(440, 0.5), 16000)
    result = run_main("evaluate", tmp_path / "t", "--model", trained_model, "-o", tmp_path / "r")
    assert (result.returncode, result.stderr) == (
        1, f"error: {tmp_path / 't' / 'stray.wav'}: not in a label folder (a folder-per-label tree holds {tmp_path / 't'}/<label>/<clip>)\n"
    )
    shutil.rmtree(tmp_path / "t" / "yes")
    (tmp_path / "t" / "stray.wav").unlink()
    result = run_main("train", tmp_path / "t", "-o", tmp_path / "run")
    assert (result.returncode, result.stderr) == (1, f"error: {tmp_path / 't'}: no train clips in label folders (expected {tmp_path / 't'}/<label>/<clip>.wav)\n")
