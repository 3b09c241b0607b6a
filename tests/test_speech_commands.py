"""kwsbatch.corpus.speech_commands and `kwsbatch manifest`: published splits, unknown folding, silence cutting."""

import csv
import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import run_main
from sc_tree import NOISE_TONES, RATE, make_tree

from kwsbatch.corpus.speech_commands import DatasetError, ManifestConfig, speaker_of, which_set, write_manifests
from kwsbatch.files.manifest import read_manifest

KEYWORDS = "yes,no,up"


# Files of Speech Commands v0.01 and the split its published validation_list.txt and
# testing_list.txt put them in (and two never listed, so training).
PUBLISHED = {
    "cat/2aa787cf_nohash_0.wav": "test",
    "go/0ea0e2f4_nohash_1.wav": "test",
    "four/27c30960_nohash_0.wav": "test",
    "cat/ffa76c4a_nohash_0.wav": "test",
    "cat/8b775397_nohash_0.wav": "val",
    "go/6a27a9bf_nohash_0.wav": "val",
    "four/605ed0ff_nohash_0.wav": "val",
    "cat/2643992f_nohash_1.wav": "val",
    "zero/004ae714_nohash_0.wav": "train",
    "yes/004ae714_nohash_3.wav": "train",
}


@pytest.mark.parametrize("path, split", PUBLISHED.items())
def test_which_set_reproduces_the_published_split(path, split):
    assert which_set(path, 10, 10) == split
    assert which_set(f"/data/sc/{path}") == split  # only the base name counts


def test_which_set_ignores_everything_after_nohash():
    splits = {which_set(f"{word}/9a7c1f83_nohash_{n}.wav") for word in ("yes", "no", "marvin") for n in range(5)}
    assert len(splits) == 1


def test_which_set_percentages_move_the_boundaries():
    names = [f"{i:08x}_nohash_0.wav" for i in range(2000)]
    assert {which_set(n, 0, 0) for n in names} == {"train"}
    shares = {s: sum(which_set(n, 30, 20) == s for n in names) / len(names) for s in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.5, "val": 0.3, "test": 0.2}, abs=0.04)


def test_speaker_of():
    assert speaker_of("yes/0a7c2a8d_nohash_1.wav") == "0a7c2a8d"
    assert speaker_of("alice_take2.flac") == "alice_take2"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc") / "speech_commands"
    speakers = make_tree(root)
    return root, speakers


@pytest.fixture(scope="module")
def manifests(tree, tmp_path_factory):
    root, _ = tree
    out = tmp_path_factory.mktemp("manifests")
    run_main("manifest", root, "-o", out, "--words", KEYWORDS, check=True)
    return out


def test_hash_split_keeps_speakers_together_and_matches_tensorflow(tree, manifests):
    _, speakers = tree
    for split in ("train", "val", "test"):
        rows = _rows(manifests / f"{split}.csv")
        assert list(rows[0]) == ["path", "label", "speaker", "word"]
        spoken = [r for r in rows if r["label"] != "_silence_"]
        assert {r["speaker"] for r in spoken} <= set(speakers[split])
        assert all(which_set(r["path"]) == split for r in spoken)
    info = json.loads((manifests / "splits.json").read_text())
    assert info["split_by"] == "hash"


def test_keywords_unknown_and_silence_counts_follow_tensorflow(tree, manifests):
    _, speakers = tree
    for split in ("train", "val", "test"):
        rows = _rows(manifests / f"{split}.csv")
        labels = [r["label"] for r in rows]
        n_keyword = 3 * len(speakers[split]) * 2  # 3 keywords x speakers x 2 utterances
        assert sum(label in KEYWORDS.split(",") for label in labels) == n_keyword
        # 10% of the split's keyword clips, rounded up, for each of _unknown_ and _silence_
        assert labels.count("_unknown_") == labels.count("_silence_") == math.ceil(n_keyword * 0.1)
        assert {r["word"] for r in rows if r["label"] == "_unknown_"} <= {"cat", "dog"}
        assert not {"cat", "dog"} & set(labels)


def test_manifest_paths_resolve_for_the_readers(manifests):
    for split in ("train", "val", "test"):
        rows = read_manifest(manifests / f"{split}.csv", require_label=True)  # checks every file exists
        assert all(row.audio_path.is_file() for row in rows)


def test_silence_is_cut_from_its_own_split_stretch_of_the_noise(manifests):
    seen = set()
    for split, freq in NOISE_TONES.items():
        for row in _rows(manifests / f"{split}.csv"):
            if row["label"] != "_silence_":
                continue
            audio, rate = sf.read(manifests / row["path"], dtype="float32")
            assert (rate, len(audio)) == (RATE, RATE)  # 1 s
            assert row["speaker"].endswith(f":{split}")
            if np.abs(audio).max() < 1e-3:
                continue  # drawn almost silent: no tone left to measure
            crossings = np.count_nonzero(np.diff(np.signbit(audio)))
            assert crossings == pytest.approx(2 * freq, rel=0.05), row["path"]
            seen.add(split)
    assert seen == {"train", "val", "test"}


def test_same_settings_give_identical_files(tree, manifests):
    root, _ = tree
    again = manifests.parent / f"{manifests.name}-again"  # a sibling: the relative paths match
    run_main("manifest", root, "-o", again, "--words", KEYWORDS, check=True)
    for name in ("train.csv", "val.csv", "test.csv", "splits.json"):
        assert (again / name).read_bytes() == (manifests / name).read_bytes()
    clips = sorted(p.name for p in (manifests / "_silence_").iterdir())
    assert clips == sorted(p.name for p in (again / "_silence_").iterdir())
    assert all((again / "_silence_" / c).read_bytes() == (manifests / "_silence_" / c).read_bytes() for c in clips)


def test_rerun_replaces_earlier_silence_clips(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "m"
    run_main("manifest", root, "-o", out, "--words", KEYWORDS, "--silence-percent", "50", check=True)
    many = len(list((out / "_silence_").iterdir()))
    run_main("manifest", root, "-o", out, "--words", KEYWORDS, check=True)
    listed = {r["path"] for s in ("train", "val", "test") for r in _rows(out / f"{s}.csv") if r["label"] == "_silence_"}
    assert {f"_silence_/{p.name}" for p in (out / "_silence_").iterdir()} == listed
    assert len(listed) < many


def test_list_files_decide_the_split_when_present(tmp_path):
    root = tmp_path / "sc"
    speakers = make_tree(root, words=("yes", "cat"))
    train_speaker = speakers["train"][0]
    # Against the hash: a train speaker's clip listed for testing; one listed file does not exist.
    (root / "testing_list.txt").write_text(f"yes/{train_speaker}_nohash_0.wav\nyes/gone_nohash_0.wav\n")
    (root / "validation_list.txt").write_text(f"yes/{speakers['test'][0]}_nohash_1.wav\n\n")
    out = tmp_path / "m"
    result = run_main("manifest", root, "-o", out, "--words", "yes", check=True)
    assert "1 files named in the split lists are not in" in result.stderr
    test = [r["path"] for r in _rows(out / "test.csv") if r["label"] == "yes"]
    val = [r["path"] for r in _rows(out / "val.csv") if r["label"] == "yes"]
    assert test == [f"../sc/yes/{train_speaker}_nohash_0.wav"]
    assert val == [f"../sc/yes/{speakers['test'][0]}_nohash_1.wav"]
    info = json.loads((out / "splits.json").read_text())
    assert (info["split_by"], info["listed_missing"]) == ("lists", 1)


def test_all_words_and_all_unknowns(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "all"
    run_main("manifest", root, "-o", out, "--words", "all", "--silence-percent", "0", check=True)
    labels = {r["label"] for s in ("train", "val", "test") for r in _rows(out / f"{s}.csv")}
    assert labels == {"yes", "no", "up", "cat", "dog"}
    assert not (out / "_silence_").exists()
    out = tmp_path / "unknown"
    run_main("manifest", root, "-o", out, "--words", "yes", "--unknown-percent", "all", check=True)
    unknown = [r for s in ("train", "val", "test") for r in _rows(out / f"{s}.csv") if r["label"] == "_unknown_"]
    assert len(unknown) == 4 * 8 * 2  # no, up, cat, dog x 8 speakers x 2 utterances
    assert json.loads((out / "splits.json").read_text())["settings"]["unknown_percent"] == "all"


def test_unknown_choice_depends_on_seed_not_on_other_files(tree, tmp_path):
    root, _ = tree
    config = ManifestConfig(words=("yes",), unknown_percent=25, silence_percent=0)
    first = write_manifests(root, tmp_path / "a", config)
    again = write_manifests(root, tmp_path / "b", config)
    other = write_manifests(root, tmp_path / "c", ManifestConfig(words=("yes",), unknown_percent=25, silence_percent=0, seed=1))
    assert first.counts == again.counts == other.counts
    assert (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    assert (tmp_path / "a" / "train.csv").read_text() != (tmp_path / "c" / "train.csv").read_text()


def test_missing_word_is_a_one_line_error(tree, tmp_path):
    root, _ = tree
    result = run_main("manifest", root, "-o", tmp_path / "m", "--words", "yes,marvin")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no folder of clips for marvin (found: cat, dog, no, up, yes)"]


def test_default_words_are_the_standard_ten(tree, tmp_path):
    root, _ = tree
    result = run_main("manifest", root, "-o", tmp_path / "m")
    assert result.returncode == 1
    assert "no folder of clips for down, left, right, on, off, stop, go (found: cat, dog, no, up, yes)" in result.stderr


def test_no_background_noise_asks_for_silence_percent_zero(tmp_path):
    root = tmp_path / "sc"
    make_tree(root, words=("yes", "no"), noise=False)
    result = run_main("manifest", root, "-o", tmp_path / "m", "--words", "yes")
    assert result.returncode == 1
    assert "pass --silence-percent 0" in result.stderr
    run_main("manifest", root, "-o", tmp_path / "m", "--words", "yes", "--silence-percent", "0", check=True)


def test_bad_settings_are_refused():
    with pytest.raises(DatasetError, match="reserved"):
        ManifestConfig(words=("yes", "_silence_"))
    with pytest.raises(DatasetError, match="leave some clips for training"):
        ManifestConfig(validation_percent=60, testing_percent=40)
    with pytest.raises(DatasetError, match="unknown-percent must be >= 0"):
        ManifestConfig(unknown_percent=-1)


def test_a_silence_folder_in_the_tree_is_used_instead_of_cutting(tmp_path):
    root = tmp_path / "sc"
    speakers = make_tree(root, words=("yes", "no"), noise=False)
    (root / "_silence_").mkdir()
    for speaker in speakers["train"] + speakers["test"]:
        sf.write(root / "_silence_" / f"{speaker}_nohash_0.wav", np.zeros(RATE, dtype=np.float32), RATE)
    out = tmp_path / "m"
    run_main("manifest", root, "-o", out, "--words", "yes", check=True)
    assert not (out / "_silence_").exists()
    for split in ("train", "test"):
        silence = [r for r in _rows(out / f"{split}.csv") if r["label"] == "_silence_"]
        assert sorted(r["path"] for r in silence) == [f"../sc/_silence_/{s}_nohash_0.wav" for s in sorted(speakers[split])]
