"""kwsbatch.corpus.check and `kwsbatch check`: the preflight audit of manifests and folders."""

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import run_main, tone
from sc_tree import make_tree

from kwsbatch.corpus.check import check_corpus, inspect_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A Speech Commands tree and its manifests, written by the real CLI: a clean starting point."""
    base = tmp_path_factory.mktemp("check")
    make_tree(base / "sc", words=("yes", "no", "cat"))
    run_main("manifest", base / "sc", "-o", base / "manifests", "--words", "yes,no", check=True)
    return base


def _write(path, rows, columns=("path", "label", "speaker")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def _check(*args, cwd=None):
    result = run_main("check", *map(str, args), cwd=cwd)
    return result


def test_clean_manifests_pass_strict(corpus, tmp_path):
    out = tmp_path / "check.json"
    result = _check(corpus / "manifests", "--strict", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "no problems found" in result.stdout
    report = json.loads(out.read_text())
    assert report["problems"]["total"] == 0
    assert report["files"] == report["readable"] == sum(sum(c.values()) for c in report["labels"].values())
    assert set(report["labels"]) == {"train", "val", "test"}
    assert report["labels"]["val"] == {"_silence_": 1, "_unknown_": 1, "no": 4, "yes": 4}
    assert report["sample_rate"] == {"16000": report["files"]}
    assert report["channels"] == {"1": report["files"]}
    # the tree's clips last 0.5 s, the cut silence 1 s
    silence = sum(c["_silence_"] for c in report["labels"].values())
    counts = dict(zip(report["duration_s"]["upper_edges"], report["duration_s"]["counts"]))
    assert counts[0.75] == report["files"] - silence and counts[1.5] == silence
    assert (report["duration_s"]["min"], report["duration_s"]["max"]) == (0.5, 1.0)


def test_problems_are_found_and_strict_fails(corpus, tmp_path):
    sc = tmp_path / "sc"
    shutil.copytree(corpus / "sc", sc)
    train = [r for r in csv.DictReader(open(corpus / "manifests" / "train.csv")) if r["label"] == "yes"]
    test = [r for r in csv.DictReader(open(corpus / "manifests" / "test.csv")) if r["label"] in ("yes", "no")]
    (sc / "yes" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(sc / "yes" / "stereo8k.wav", np.stack([tone(440, 0.3, 8000)] * 2, axis=1), 8000)
    manifests = tmp_path / "m"  # beside the copy, so the manifests' ../sc/ paths lead to it
    manifests.mkdir()
    _write(manifests / "train.csv", [(r["path"], r["label"], r["speaker"]) for r in train]
           + [("../sc/yes/broken.wav", "yes", "zz"), ("../sc/yes/missing.wav", "yes", "zz"),
              ("../sc/yes/stereo8k.wav", "yes", "zz")])
    # The first train clip again, under another label and speaker: a leak and a labelling error.
    _write(manifests / "test.csv", [(r["path"], r["label"], r["speaker"]) for r in test] + [(train[0]["path"], "no", "leaker")])
    _write(manifests / "val.csv", [(train[1]["path"], "yes", train[1]["speaker"])])  # its speaker is in train too

    out = tmp_path / "report.json"
    result = _check(manifests, "--strict", "-o", out)
    assert result.returncode == 3, result.stderr
    report = json.loads(out.read_text())
    problems = report["problems"]
    unreadable = {item["path"]: item["error"] for item in problems["unreadable"]["listed"]}
    assert unreadable["../sc/yes/missing.wav"] == "file not found"
    assert unreadable["../sc/yes/broken.wav"].startswith("cannot decode audio")
    assert problems["unreadable"]["count"] == 2
    assert problems["duplicates"]["groups"] == 2  # the leak, and the val clip listed in train too
    leak_group = next(g for g in problems["duplicates"]["listed"] if g["conflicting_labels"])
    assert leak_group["across_splits"] and leak_group["same_file_listed_twice"]
    assert sorted((f["split"], f["label"]) for f in leak_group["files"]) == [("test", "no"), ("train", "yes")]
    straddling = {item["speaker"]: item["splits"] for item in problems["speakers_across_splits"]["listed"]}
    assert train[1]["speaker"] in straddling
    assert problems["labels_missing_from_split"] == {"train": ["no"], "val": ["no"]}
    assert report["sample_rate"]["8000"] == 1 and report["channels"]["2"] == 1
    assert "2 missing or unreadable file(s)" in result.stdout
    # Without --strict the same audit succeeds: problems are reported, not fatal.
    assert _check(manifests, "-o", out).returncode == 0


def test_jobs_give_the_same_report(corpus, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _check(corpus / "manifests" / "train.csv", corpus / "manifests" / "test.csv", "-o", one, "-j", "1")
    _check(corpus / "manifests" / "train.csv", corpus / "manifests" / "test.csv", "-o", two, "-j", "2")
    assert json.loads(one.read_text()) == json.loads(two.read_text())


def test_folder_scan_labels_by_folder_and_speakers_by_name(corpus, tmp_path):
    out = tmp_path / "r.json"
    assert _check(corpus / "sc", "-o", out).returncode == 0
    report = json.loads(out.read_text())
    assert report["labels"] == {"all": {"_background_noise_": 2, "cat": 16, "no": 16, "yes": 16}}
    assert report["problems"]["total"] == 0


def test_default_report_path_and_missing_input(corpus, tmp_path):
    result = _check(corpus / "manifests" / "val.csv", cwd=tmp_path)
    assert result.returncode == 0
    assert json.loads((tmp_path / "reports" / "val" / "check.json").read_text())["files"] == 10
    result = _check(tmp_path / "nope.csv")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.csv'}: manifest not found"


def test_inspect_file_reports_what_it_reads(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(300, 0.25, 22050), 22050, subtype="PCM_24")
    facts = inspect_file(path)
    assert (facts.sample_rate, facts.channels, facts.frames, facts.format, facts.error) == (22050, 1, 5512, "FLAC PCM_24", None)
    assert facts.duration_s == pytest.approx(0.25, abs=1e-4)
    assert facts.digest == inspect_file(path).digest and len(facts.digest) == 16
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    assert inspect_file(empty).error == "contains no samples"
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    assert inspect_file(nan).error == "contains NaN or infinite samples"


def test_listing_is_capped_but_counts_are_complete(corpus):
    report = check_corpus([str(corpus / "manifests" / "train.csv"), str(corpus / "manifests" / "train.csv")], max_listed=3)
    assert report.duplicate_groups == report.files // 2
    assert len(report.duplicates_listed) == 3
    assert all(g["same_file_listed_twice"] for g in report.duplicates_listed)
