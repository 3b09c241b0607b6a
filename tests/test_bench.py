"""bench.py through the CLI: it runs on a handful of clips and prints every figure (no timings asserted)."""

import re

from conftest import run_main


def test_bench_prints_the_floors_the_runs_and_their_ratios(tmp_path):
    result = run_main("bench", "--files", "12", "--single-files", "5", "--batch-size", "4", "--dir", tmp_path, "-j", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for figure in ("decode floor", "compute floor", "back-to-back floor", "label end to end", "label --processes", "one at a time"):
        assert re.search(rf"^  {figure} +[0-9,]+ +[0-9.]+ ", out, re.MULTILINE), figure
    ratios = ("end to end / back-to-back floor", "end to end / compute floor", "end to end / one at a time", "--processes / threads")
    for ratio in ratios:
        assert re.search(rf"^  {re.escape(ratio)} +[0-9.]+", out, re.MULTILINE), ratio
    assert re.search(r"peak RSS [0-9,]+ MiB", out) and "on 5 files" in out
    assert out.startswith("kwsbatch bench: 12 clips of 0.5-1.5 s (WAV and FLAC, 1 in 5 stereo 44.1 kHz); 2 workers, batch 4")
    # The clips are kept in --dir and reused by the next run.
    clips = sorted(p.name for p in (tmp_path / "clips").rglob("clip*"))
    assert len(clips) == 12 and {c.rsplit(".", 1)[1] for c in clips} == {"wav", "flac"}


def test_bench_rejects_nonsense_sizes():
    result = run_main("bench", "--files", "0")
    assert result.returncode == 2 and "argument --files: must be at least 1, got 0" in result.stderr
