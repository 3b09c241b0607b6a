"""Training from several weighted manifests: `kwsbatch train a.csv b.csv:3 [--val x.csv --val y.csv]`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import run_main

from kwsbatch.cli import main
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.train.sources import TrainSource, parse_source

TINY = ("--epochs", "1", "--batch-size", "8", "--hidden", "16", "--layers", "1", "--augment", "none", "--val-fraction", "0.25")


def words_manifest(corpus: Path, split: str, words: set[str], out: Path) -> tuple[Path, int]:
    """The corpus's rows of split for some words, with absolute paths, at out; and how many."""
    with open(corpus / f"{split}.csv", newline="") as f:
        rows = [{**r, "path": str(corpus / r["path"])} for r in csv.DictReader(f) if r["label"] in words]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return out, len(rows)


def test_parse_source_splits_a_weight_off_only_when_it_is_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("a.csv") == TrainSource("a.csv", 1.0)
    assert parse_source("a.csv:4") == TrainSource("a.csv", 4.0)
    assert parse_source("data/real.csv:0.25") == TrainSource("data/real.csv", 0.25)
    assert parse_source("with:colon/a.csv") == TrainSource("with:colon/a.csv")
    assert parse_source("with:colon/a.csv:2") == TrainSource("with:colon/a.csv", 2.0)
    assert parse_source(r"C:\corpora\a.csv") == TrainSource(r"C:\corpora\a.csv")
    Path("odd.csv:3").write_text("path,label\n")  # a file really named so is that file
    assert parse_source("odd.csv:3") == TrainSource("odd.csv:3")
    assert TrainSource("a.csv", 4.0).spelled() == "a.csv:4" and TrainSource("a.csv").spelled() == "a.csv"


@pytest.mark.parametrize(
    "suffix, message",
    [
        ("0", "the weight must be a positive number, got 0"),
        ("-2", "the weight must be a positive number, got -2"),
        ("nan", "the weight must be a positive number, got nan"),
        ("inf", "the weight must be a positive number, got inf"),
        ("x", "the weight after ':' must be a positive number, got 'x'"),
    ],
)
def test_a_bad_weight_is_a_one_line_usage_error(speech_corpus, tmp_path, capsys, suffix, message):
    manifest = speech_corpus / "train.csv"
    with pytest.raises(SystemExit) as exit:
        main(["train", f"{manifest}:{suffix}", "-o", str(tmp_path / "run")])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kwsbatch train: error: argument MANIFEST[:WEIGHT]: ")
    assert err[-1].endswith(message) and f"{manifest}" in err[-1]
    assert not (tmp_path / "run").exists()


def test_weighted_manifests_train_on_the_union_of_their_classes(speech_corpus, tmp_path):
    yes_no, n_a = words_manifest(speech_corpus, "train", {"yes", "no"}, tmp_path / "a.csv")
    up_down, n_b = words_manifest(speech_corpus, "train", {"up", "down"}, tmp_path / "with:colon" / "b.csv")
    runs = []
    for name in ("one", "two"):
        result = run_main("train", yes_no, f"{up_down}:3", "-o", tmp_path / name, *TINY)
        assert result.returncode == 0, result.stderr
        runs.append(load_checkpoint(tmp_path / name / "last.pt"))
    one, two = runs
    for key, value in one.state_dict.items():  # same seed, same data: the same draws, the same model
        assert torch.equal(value, two.state_dict[key]), key
    assert one.classes == ("down", "no", "up", "yes")

    provenance = one.provenance
    assert provenance["train_manifest"] == "a.csv b.csv:3"  # names, not the training machine's paths
    a, b = provenance["train_sources"]
    assert (a["manifest"], a["weight"], b["manifest"], b["weight"]) == ("a.csv", 1.0, "b.csv", 3.0)
    # Every row went to one side: the held-out speakers' clips of each manifest to validation.
    assert a["n_train"] + a["n_val"] == n_a and b["n_train"] + b["n_val"] == n_b
    assert a["n_val"] > 0 and b["n_val"] > 0 and a["n_val"] + b["n_val"] == provenance["n_val"]
    draws = a["n_train"] + 3 * b["n_train"]
    assert b["epoch_share"] == round(3 * b["n_train"] / draws, 6)
    assert (
        f"training on 2 manifest(s), {draws} draws per epoch: a.csv {a['n_train']} clips x 1 ({a['n_train'] / draws:.0%}), "
        f"b.csv {b['n_train']} clips x 3 ({3 * b['n_train'] / draws:.0%})"
    ) in result.stderr.replace("\n", "")
    by_source = load_checkpoint(tmp_path / "one" / "best.pt").provenance["metrics"]["val_accuracy_by_source"]
    assert set(by_source) == {"a.csv", "b.csv"}
    assert "best model on validation, by source: a.csv " in result.stderr


def test_several_validation_manifests(speech_corpus, tmp_path):
    val_a, n_a = words_manifest(speech_corpus, "test", {"yes", "no"}, tmp_path / "va.csv")
    val_b, n_b = words_manifest(speech_corpus, "test", {"up", "down"}, tmp_path / "vb.csv")
    result = run_main("train", speech_corpus / "train.csv", "--val", val_a, "--val", val_b, "-o", tmp_path / "run", *TINY)
    assert result.returncode == 0, result.stderr
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.provenance["val_manifest"] == "va.csv vb.csv"
    assert best.provenance["n_val"] == n_a + n_b
    assert best.provenance["n_train"] == sum(1 for _ in open(speech_corpus / "train.csv")) - 1  # nothing held out
    assert set(best.provenance["metrics"]["val_accuracy_by_source"]) == {"va.csv", "vb.csv"}
    assert "training on" not in result.stderr  # one manifest of weight 1: nothing to report about sources
