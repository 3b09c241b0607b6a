"""bench.py through the CLI: it runs on a handful of clips and prints every figure (no timings asserted)."""

import csv
import re

from conftest import run_main


def test_bench_prints_the_floors_the_runs_and_their_ratios(tmp_path):
    result = run_main("bench", "--files", "12", "--single-files", "5", "--train-files", "8", "--batch-size", "4", "--dir", tmp_path, "-j", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for figure, workers in (("decode floor", "1"), ("decode floor", "2"), ("compute floor", "all"), ("back-to-back floor", "-"),
                            ("label end to end", "1"), ("label end to end", "2"), ("notebook, whole", "1"), ("label, whole", "2"),
                            ("training epoch", "2"), ("notebook epoch", "1")):
        assert re.search(rf"^  {figure} +{workers} +[0-9,]+ +[0-9.]+ ", out, re.MULTILINE), figure
    ratios = ("label end to end / back-to-back floor", "label end to end / compute floor", "label / notebook, whole processes",
              "training epoch / notebook epoch")
    for ratio in ratios:
        assert re.search(rf"^  {re.escape(ratio)} +[0-9.]+", out, re.MULTILINE), ratio
    assert re.search(r"peak RSS [0-9,]+ MiB", out) and "tools/notebook.py on 5 files" in out
    assert out.startswith("kwsbatch bench: 12 clips of 0.5-1.5 s (WAV and FLAC, 1 in 5 stereo 44.1 kHz); batch 4")
    # The notebook's script and label agree on every file's label.
    with open(tmp_path / "notebook.csv", newline="") as f, open(tmp_path / "whole.csv", newline="") as g:
        notebook, label = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [(r["path"], r["label"]) for r in notebook] == [(r["path"], r["label"]) for r in label]
    # The clips are kept in --dir and reused by the next run.
    clips = sorted(p.name for p in (tmp_path / "clips").rglob("clip*"))
    assert len(clips) == 12 and {c.rsplit(".", 1)[1] for c in clips} == {"wav", "flac"}


def test_bench_rejects_nonsense_sizes():
    result = run_main("bench", "--files", "0")
    assert result.returncode == 2 and "argument --files: must be at least 1, got 0" in result.stderr
