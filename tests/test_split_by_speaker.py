"""bin/split-by-speaker, the real-speech split of bin/make-default-model: no speaker in two splits."""

import csv
import subprocess
import sys

import numpy as np
import soundfile as sf
from conftest import REPO


def _write_corpus(root):
    """40 speakers x 3 clips and 10 speakerless noise clips under root, with a manifest of relative paths."""
    rows = []
    for s in range(40):
        for n in range(3):
            rows.append({"path": f"yes/spk{s:02d}_nohash_{n}.flac", "label": "yes", "speaker": f"spk{s:02d}"})
    rows += [{"path": f"_silence_/noise_{n}.flac", "label": "_silence_", "speaker": ""} for n in range(10)]
    for row in rows:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / row["path"], np.zeros(160, dtype=np.float32), 16000)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _split(root, out, *flags):
    subprocess.run([sys.executable, str(REPO / "bin" / "split-by-speaker"), str(root / "manifest.csv"), str(out), *flags], check=True,
                   capture_output=True)
    return {name: list(csv.DictReader(open(out / f"{name}.csv", newline=""))) for name in ("train", "val", "test")}


def test_every_clip_lands_once_and_no_speaker_crosses_splits(tmp_path):
    rows = _write_corpus(tmp_path / "real")
    splits = _split(tmp_path / "real", tmp_path / "out")
    paths = [r["path"] for chosen in splits.values() for r in chosen]
    assert sorted(paths) == sorted(str((tmp_path / "real" / r["path"]).resolve()) for r in rows)
    speakers = {name: {r["speaker"] for r in chosen if r["speaker"]} for name, chosen in splits.items()}
    assert not speakers["train"] & speakers["val"] and not speakers["train"] & speakers["test"] and not speakers["val"] & speakers["test"]
    assert all(len(s) > 0 for s in speakers.values())


def test_the_split_is_stable_and_written_paths_open_from_anywhere(tmp_path):
    _write_corpus(tmp_path / "real")
    first = _split(tmp_path / "real", tmp_path / "a")
    again = _split(tmp_path / "real", tmp_path / "b", "--val", "12", "--test", "20")
    assert first == again
    assert all(sf.info(r["path"]).frames == 160 for r in first["test"])


def test_more_val_percent_moves_speakers_only_into_val(tmp_path):
    _write_corpus(tmp_path / "real")
    small = _split(tmp_path / "real", tmp_path / "a", "--val", "10", "--test", "0")
    large = _split(tmp_path / "real", tmp_path / "b", "--val", "30", "--test", "0")
    val_small = {r["path"] for r in small["val"]}
    val_large = {r["path"] for r in large["val"]}
    assert val_small < val_large
