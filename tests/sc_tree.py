"""A tiny Speech-Commands-like tree for the dataset tests: tones for words, tones to cut silence from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from kwsbatch.corpus.speech_commands import which_set

RATE = 16000
WORDS = ("yes", "no", "up", "cat", "dog")  # yes,no,up: keywords in the tests; cat,dog fold into _unknown_
NOISE_TONES = {"train": 200.0, "val": 1000.0, "test": 3000.0}  # frequency of each stretch of the noise file


def speakers_by_split(per_split: dict[str, int]) -> dict[str, list[str]]:
    """Speaker ids (8 hex digits, like Speech Commands) that TensorFlow's hash puts in each split."""
    chosen: dict[str, list[str]] = {s: [] for s in per_split}
    i = 0
    while any(len(chosen[s]) < n for s, n in per_split.items()):
        speaker = hashlib.md5(str(i).encode()).hexdigest()[:8]
        split = which_set(f"{speaker}_nohash_0.wav")
        if len(chosen[split]) < per_split[split]:
            chosen[split].append(speaker)
        i += 1
    return chosen


def word_clip(word: str, speaker: str, n: int, seconds: float = 0.5) -> np.ndarray:
    """A tone per word with a little noise seeded by (word, speaker, n), so every file's bytes differ."""
    rng = np.random.default_rng(list(hashlib.sha1(f"{word}/{speaker}/{n}".encode()).digest()[:8]))
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (300 + 250 * WORDS.index(word)) * t)
    return (tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def noise_file(seconds: float = 20.0, splits=(80, 10, 10)) -> np.ndarray:
    """Consecutive tones at NOISE_TONES for the train | val | test stretches of a background file."""
    parts = []
    for (split, freq), share in zip(NOISE_TONES.items(), splits):
        t = np.arange(int(seconds * RATE * share / 100)) / RATE
        parts.append(0.5 * np.sin(2 * np.pi * freq * t))
    return np.concatenate(parts).astype(np.float32)


def make_tree(root: Path, *, per_split=None, utterances: int = 2, words=WORDS, noise: bool = True) -> dict[str, list[str]]:
    """Write root/<word>/<speaker>_nohash_<n>.wav (+ _background_noise_); returns speakers by split."""
    speakers = speakers_by_split(per_split or {"train": 4, "val": 2, "test": 2})
    for word in words:
        (root / word).mkdir(parents=True)
        for split_speakers in speakers.values():
            for speaker in split_speakers:
                for n in range(utterances):
                    sf.write(root / word / f"{speaker}_nohash_{n}.wav", word_clip(word, speaker, n), RATE, subtype="PCM_16")
    if noise:
        (root / "_background_noise_").mkdir()
        sf.write(root / "_background_noise_" / "tones.wav", noise_file(), RATE, subtype="PCM_16")
        sf.write(root / "_background_noise_" / "tones_short.wav", noise_file(12.0), RATE, subtype="PCM_16")
        (root / "_background_noise_" / "README.md").write_text("not audio\n")
    return speakers
