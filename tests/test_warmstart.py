"""`train --init CKPT` through the real CLI: the run starts from the checkpoint exactly, trains every
layer, and maps the classifier's rows by class name. (--finetune: tests/test_train.py.)"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run_main

from kwsbatch.cli import main
from kwsbatch.model.checkpoint import checkpoint_id, load_checkpoint

TINY = ("--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25", "--augment", "none")


@pytest.fixture(scope="module")
def base(speech_corpus, tmp_path_factory) -> Path:
    """A small model (16 units, 1 layer, no convolution) to start from: settings unlike the CLI defaults."""
    run = tmp_path_factory.mktemp("base")
    run_main("train", speech_corpus / "train.csv", "-o", run, *TINY, "--hidden", "16", "--layers", "1", "--conv-channels", "0", "-q", check=True)
    return run / "best.pt"


def relabelled(corpus: Path, out: Path, labels: dict[str, str]) -> Path:
    """The corpus's train rows with absolute paths, each label renamed by labels (absent: dropped)."""
    with open(corpus / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in labels]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows({**r, "path": str(corpus / r["path"]), "label": labels[r["label"]]} for r in rows)
    return out


def init_train(manifest: Path, out: Path, base: Path, *flags: str):
    return run_main("train", manifest, "-o", out, "--init", base, *TINY, *flags)


def test_init_with_zero_size_steps_is_exactly_the_checkpoint_and_records_its_id(speech_corpus, base, tmp_path, capsys):
    result = init_train(speech_corpus / "train.csv", tmp_path / "run", base, "--lr", "0")
    assert result.returncode == 0, result.stderr
    start = load_checkpoint(base)
    log = result.stderr.replace("\n", "")
    assert f"starting from {base} (model {checkpoint_id(start)}), training every layer: classifier rows kept for 4 (down, no, up, yes)" in log
    # No --hidden/--layers/--conv-channels given: the CLI's defaults lose to the checkpoint's settings, and the log says so.
    assert "--init: the model and feature settings are the checkpoint's, not this run's: " in log
    assert "hidden 16 (not 128), layers 1 (not 2)" in log
    tuned = load_checkpoint(tmp_path / "run" / "last.pt")
    assert tuned.classes == start.classes and tuned.model_config == start.model_config and tuned.feature_config == start.feature_config
    assert tuned.state_dict.keys() == start.state_dict.keys()
    for key, value in start.state_dict.items():  # weights and the normalisation statistics alike
        assert torch.equal(value, tuned.state_dict[key]), key
    provenance = tuned.provenance
    assert provenance["started_from"] == {"model_id": checkpoint_id(start), "classes": list(start.classes), "trains": "every layer"}
    assert provenance["train_config"]["init"] == checkpoint_id(start) and provenance["train_config"]["finetune"] is None
    assert str(base.parent) not in json.dumps(provenance)  # the model id, not the path
    assert main(["info", str(tmp_path / "run" / "last.pt")]) == 0
    assert f"started from  model {checkpoint_id(start)}, every layer trained" in capsys.readouterr().out


def test_init_takes_the_runs_dropout_and_no_other_model_flag(speech_corpus, tmp_path):
    start = tmp_path / "start"  # two layers, so dropout acts between them
    run_main("train", speech_corpus / "train.csv", "-o", start, *TINY, "--hidden", "16", "--layers", "2", "--conv-channels", "0",
             "--dropout", "0.3", "-q", check=True)
    runs = {dropout: tmp_path / f"dropout-{dropout}" for dropout in ("0", "0.5")}
    for dropout, run in runs.items():
        result = init_train(speech_corpus / "train.csv", run, start / "best.pt", "--lr", "0", "--dropout", dropout, "--hidden", "32")
        assert result.returncode == 0, result.stderr
        ignored = re.search(r"the model and feature settings are the checkpoint's, not this run's: (.*?)(?:starting from|$)", result.stderr.replace("\n", ""))
        assert ignored and "hidden 16 (not 32)" in ignored[1] and "dropout" not in ignored[1]
        tuned = load_checkpoint(run / "last.pt")
        assert tuned.model_config.dropout == float(dropout) and tuned.model_config.hidden == 16
        for key, value in load_checkpoint(start / "best.pt").state_dict.items():  # lr 0: no weight moved
            assert torch.equal(value, tuned.state_dict[key]), key
    # The same weights, batches and seed: only dropout, acting in training, makes the losses differ.
    losses = {d: [row["train_loss"] for row in csv.DictReader((run / "history.csv").read_text().splitlines())] for d, run in runs.items()}
    assert losses["0"] != losses["0.5"]


def test_init_trains_every_layer_and_keeps_the_normalisation(speech_corpus, base, tmp_path):
    result = init_train(speech_corpus / "train.csv", tmp_path / "run", base, "--lr", "0.05", "-q")
    assert result.returncode == 0, result.stderr
    start, tuned = load_checkpoint(base), load_checkpoint(tmp_path / "run" / "last.pt")
    parameters = {name for name, _ in start.build().named_parameters()}
    assert {"head.lstm.weight_ih_l0", "head.lstm.weight_hh_l0", "head.classifier.weight"} <= parameters
    for key, value in start.state_dict.items():
        moved = not torch.equal(value, tuned.state_dict[key])
        assert moved == (key in parameters), f"{key}: {'moved' if moved else 'did not move'}"


def test_init_maps_classifier_rows_by_class_name(speech_corpus, base, tmp_path):
    manifest = relabelled(speech_corpus, tmp_path / "m.csv", {"yes": "yes", "no": "no", "up": "hello"})
    result = init_train(manifest, tmp_path / "run", base, "--lr", "0")
    assert result.returncode == 0, result.stderr
    assert "classifier rows kept for 2 (no, yes), new for 1 (hello), dropped for 2 (down, up)" in result.stderr.replace("\n", "")
    start, tuned = load_checkpoint(base), load_checkpoint(tmp_path / "run" / "last.pt")
    assert start.classes == ("down", "no", "up", "yes") and tuned.classes == ("hello", "no", "yes")
    for name in ("weight", "bias"):
        theirs, ours = start.state_dict[f"head.classifier.{name}"], tuned.state_dict[f"head.classifier.{name}"]
        assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[2], theirs[3])  # no, yes: kept where they now sit
        assert not any(torch.equal(ours[0], row) for row in theirs)  # hello: fresh
    for key, value in start.state_dict.items():
        if not key.startswith("head.classifier."):
            assert torch.equal(value, tuned.state_dict[key]), key


def test_init_and_finetune_together_is_a_usage_error(speech_corpus, base, tmp_path):
    result = run_main("train", speech_corpus / "train.csv", "--init", base, "--finetune", base, "-o", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("argument --init: start from one checkpoint: --finetune (the classifier) or --init (every layer), not both")


def test_init_from_a_missing_checkpoint_is_an_error(speech_corpus, tmp_path):
    result = init_train(speech_corpus / "train.csv", tmp_path / "run", tmp_path / "none.pt")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.pt'}: model file not found"
