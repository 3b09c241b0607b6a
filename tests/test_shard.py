"""--shard K/N and `kwsbatch merge` through the real CLI: an array of N label runs covers a corpus once."""

import json

import pytest
from conftest import run_main
from test_job import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, make_corpus, read_rows

from kwsbatch.label.shard import Shard, shard_of


def test_shard_of_is_pinned_so_arrays_agree_across_machines_and_versions():
    # Literal values: Python's salted hash() or any change of hash would make the shards of runs
    # on two machines, or before and after an upgrade, overlap and miss files.
    assert [shard_of(f"clip{i}.wav", 3) for i in range(8)] == [2, 2, 0, 0, 0, 1, 2, 2]
    assert shard_of("corpus/été.flac", 1000) == 551


@pytest.mark.parametrize("text", ["3", "a/b", "4/4", "-1/4", "0/0", "1/"])
def test_a_malformed_shard_is_a_usage_error(tmp_path, text):
    make_corpus(tmp_path / "corpus", 2)
    result = run_main("label", tmp_path / "corpus", "-o", tmp_path / "out.csv", "--shard", text)
    assert result.returncode == EXIT_USAGE
    assert "--shard" in result.stderr and "Traceback" not in result.stderr


def test_shard_parse():
    assert Shard.parse("2/5") == Shard(2, 5)
    assert str(Shard(0, 1)) == "0/1"
    with pytest.raises(ValueError, match="0 <= K < N"):
        Shard.parse("5/5")


def test_three_shards_cover_the_corpus_once_and_merge_to_the_unsharded_output(tmp_path):
    make_corpus(tmp_path / "corpus", 40)
    whole = tmp_path / "whole.csv"
    assert run_main("label", tmp_path / "corpus", "-o", whole).returncode == EXIT_OK
    shards = [tmp_path / f"out-{k}.csv" for k in range(3)]
    for k, shard in enumerate(shards):
        result = run_main("label", tmp_path / "corpus", "-o", shard, "--shard", f"{k}/3", "-j", "1")
        assert result.returncode == EXIT_OK, result.stderr
    sizes = [len(read_rows(s)) for s in shards]
    assert sum(sizes) == 40 and all(0 < n < 40 for n in sizes)
    for k, shard in enumerate(shards):
        assert all(shard_of(r["path"], 3) == k for r in read_rows(shard))

    merged = tmp_path / "merged.csv"
    result = run_main("merge", *shards, "-o", merged, "--inputs", tmp_path / "corpus")
    assert result.returncode == EXIT_OK, result.stderr
    assert f"merged 3 shards: 40 files, 40 rows -> {merged}" in result.stderr
    by_path = {r["path"]: r for r in read_rows(whole)}
    rows = read_rows(merged)
    assert sorted(r["path"] for r in rows) == sorted(by_path)
    for row in rows:
        # A shard batches other files together than the whole run does: the same label and file
        # columns, probabilities within the pipeline's batch invariance (1e-5, 6 decimals written).
        whole_row = by_path[row["path"]]
        scores = [c for c in row if c.startswith("p_") or c == "confidence"]
        assert {c: v for c, v in row.items() if c not in scores} == {c: v for c, v in whole_row.items() if c not in scores}
        for column in scores:
            assert float(row[column]) == pytest.approx(float(whole_row[column]), abs=1e-5), column

    # A shard rerun is incremental like any label run.
    again = run_main("label", tmp_path / "corpus", "-o", shards[0], "--shard", "0/3")
    assert f"skipped {sizes[0]} unchanged" in again.stderr


def test_merge_reports_a_missing_shard_and_a_duplicated_one(tmp_path):
    make_corpus(tmp_path / "corpus", 20)
    shards = [tmp_path / f"out-{k}.csv" for k in range(2)]
    for k, shard in enumerate(shards):
        assert run_main("label", tmp_path / "corpus", "-o", shard, "--shard", f"{k}/2", "-j", "1").returncode == EXIT_OK
    n0 = len(read_rows(shards[0]))

    merged = tmp_path / "merged.csv"
    missing = run_main("merge", shards[0], "-o", merged, "--inputs", tmp_path / "corpus")
    assert missing.returncode == EXIT_PARTIAL
    assert f"{20 - n0} missing from every shard (" in missing.stderr
    assert len(read_rows(merged)) == n0  # still written: the rows it has are good

    doubled = run_main("merge", shards[0], shards[1], shards[0], "-o", merged)
    assert doubled.returncode == EXIT_PARTIAL
    assert f"20 files, 20 rows -> {merged}; {n0} duplicated, kept the first copy" in doubled.stderr
    assert sorted(r["path"] for r in read_rows(merged)) == sorted(
        r["path"] for s in shards for r in read_rows(s)
    )


def test_merge_to_jsonl_keeps_numbers_typed_and_refuses_shards_of_other_runs(tmp_path):
    # Shards follow a hash of the absolute paths, so tmp_path decides which shard a clip lands in:
    # with 6 clips, 1 run in 64 found shard 0 empty; with 24, 1 in 16 million.
    make_corpus(tmp_path / "corpus", 24)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_main("label", tmp_path / "corpus", "-o", a, "--shard", "0/2").returncode == EXIT_OK
    assert run_main("label", tmp_path / "corpus", "-o", b, "--shard", "1/2", "--window", "0.5").returncode in (EXIT_OK, EXIT_PARTIAL)
    merged = tmp_path / "m.jsonl"
    assert run_main("merge", a, "-o", merged).returncode == EXIT_OK
    records = [json.loads(line) for line in merged.read_text().splitlines()]
    assert records and all(isinstance(r["confidence"], float) and isinstance(r["file_size"], int) for r in records)

    mixed = run_main("merge", a, b, "-o", tmp_path / "m.csv")
    assert mixed.returncode == EXIT_ERROR
    assert mixed.stderr.startswith(f"error: {b}: has other columns than {a}")
    assert not (tmp_path / "m.csv").exists()

    into_itself = run_main("merge", a, "-o", a)
    assert into_itself.returncode == EXIT_ERROR and "is also one of the shards" in into_itself.stderr
