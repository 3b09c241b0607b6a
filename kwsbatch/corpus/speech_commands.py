"""Speech Commands and corpora laid out like it: a folder-per-label tree -> train/val/test manifests.

The tree is the one Google's Speech Commands ships::

    DIR/<word>/<speaker>_nohash_<n>.wav    one folder per spoken word
    DIR/_background_noise_/*.wav           long noise recordings (not clips)
    DIR/validation_list.txt                optional: DIR-relative paths of the validation clips
    DIR/testing_list.txt                   optional: ... of the test clips

Splits follow the published ones: the list files when the tree has them, otherwise the stable
hash of TensorFlow's speech_commands example (`which_set`), which keeps every clip of a speaker in
one split and never moves a clip when others are added. Words outside `words` fold into
`_unknown_`, and `_silence_` clips are cut from `_background_noise_`; by default each adds 10% of
a split's keyword clips, as in TensorFlow's 12-class benchmark.

`write_manifests` writes into its output folder::

    train.csv, val.csv, test.csv     path,label,speaker,word (paths relative to the folder)
    _silence_/<split>_<n>_<noise>.wav   1 s silence clips, 16-bit WAV at the noise file's rate
    splits.json                      settings, how the split was made, counts per split and label

The silence clips go into the output folder, not DIR, so the data set stays as downloaded (it may
be read-only or shared) and a later scan of DIR never mistakes generated clips for data. Each noise
file is cut into consecutive train | val | test stretches and a split's silence comes only from
its own stretch, so no second of noise is heard in two splits. A tree that has a `_silence_`
folder of its own (a published test set does) keeps those clips and cuts none.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kwsbatch import __version__
from kwsbatch.errors import KwsError
from kwsbatch.files.atomic import atomic_write
from kwsbatch.files.audio import decode_audio, is_audio_path
from kwsbatch.files.manifest import iter_tree
from kwsbatch.files.tree import NOISE_FOLDER, read_split_lists, speaker_of

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
SPLITS = ("train", "val", "test")
# The ten keywords of the standard 12-class benchmark (plus _unknown_ and _silence_).
STANDARD_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# TensorFlow's constant: the hash is taken modulo 2**27 and scaled by 100 / (2**27 - 1).
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
MANIFEST_COLUMNS = ("path", "label", "speaker", "word")


class DatasetError(KwsError):
    """A folder tree cannot be turned into manifests: missing words, no noise to cut, bad options."""


def which_set(filename: str | os.PathLike, validation_percent: float = 10.0, testing_percent: float = 10.0) -> str:
    """'train', 'val' or 'test', exactly as TensorFlow's speech_commands `which_set` decides.

    The sha1 of the base name with `_nohash_...` stripped (the whole base name, extension
    included, when there is no `_nohash_`), modulo 2**27, scaled to a percentage; below
    validation_percent is validation, below validation_percent + testing_percent is testing.
    """
    hash_name = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    hashed = int(hashlib.sha1(hash_name.encode("utf-8")).hexdigest(), 16)
    percentage = (hashed % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percent:
        return "val"
    if percentage < validation_percent + testing_percent:
        return "test"
    return "train"


@dataclass(frozen=True)
class ManifestConfig:
    """How to label and split a tree; field names match the flags of `kwsbatch manifest`."""

    # Keyword classes; None makes every word folder its own class (no _unknown_).
    words: tuple[str, ...] | None = STANDARD_WORDS
    # _unknown_ and _silence_ clips per split, as a percentage of the split's keyword clips
    # (rounded up, as TensorFlow does); math.inf keeps every unknown clip.
    unknown_percent: float = 10.0
    silence_percent: float = 10.0
    # Used only when the tree has no validation_list.txt / testing_list.txt.
    validation_percent: float = 10.0
    testing_percent: float = 10.0
    seed: int = 0  # which unknown clips are kept, where silence is cut and how loud
    silence_seconds: float = 1.0

    def __post_init__(self):
        if self.words is not None:
            words = tuple(dict.fromkeys(w.strip() for w in self.words if w.strip()))
            if not words:
                raise DatasetError("no words given: pass --words yes,no,... or --words all")
            reserved = sorted(set(words) & {UNKNOWN, SILENCE, NOISE_FOLDER})
            if reserved:
                raise DatasetError(f"{', '.join(reserved)} cannot be a keyword: it is a reserved folder name")
            object.__setattr__(self, "words", words)
        for name in ("unknown_percent", "silence_percent", "validation_percent", "testing_percent"):
            if not getattr(self, name) >= 0:
                raise DatasetError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.validation_percent + self.testing_percent >= 100:
            raise DatasetError("validation and testing percentages must leave some clips for training")
        if math.isinf(self.silence_percent):
            raise DatasetError("silence-percent must be finite: silence clips are cut, not found")
        if self.seed < 0:
            raise DatasetError(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.silence_seconds <= 10:
            raise DatasetError(f"silence clips must be 0-10 s long, got {self.silence_seconds}")


@dataclass(frozen=True)
class Clip:
    path: Path  # where the file is
    relpath: str  # DIR-relative, posix: "yes/0a7c2a8d_nohash_0.wav"
    label: str
    speaker: str
    word: str  # the folder it came from (or the noise file a silence clip was cut from)
    split: str


@dataclass(frozen=True)
class ManifestSummary:
    out_dir: Path
    split_by: str  # "lists" or "hash"
    counts: dict[str, dict[str, int]]  # split -> label -> clips
    listed_missing: int  # list-file entries with no file on disk

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def write_manifests(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: ManifestConfig = ManifestConfig()) -> ManifestSummary:
    """Scan data_dir, split, fold unknowns, cut silence; write train/val/test.csv under out_dir."""
    data_dir, out_dir = Path(os.path.abspath(data_dir)), Path(os.path.abspath(out_dir))
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: no such folder")
    if out_dir == data_dir:
        raise DatasetError(f"{out_dir}: write manifests to a folder of their own (e.g. {data_dir / 'manifests'}), not into the data set")
    lists = read_split_lists(data_dir)

    def split_of(relpath: str) -> str:  # files in neither list are training, as in TensorFlow
        if lists is not None:
            return lists.get(relpath, "train")
        return which_set(relpath, config.validation_percent, config.testing_percent)

    clips = _label_clips(_scan_words(data_dir, skip=out_dir), config, split_of)
    listed_missing = sum(1 for p in lists if not (data_dir / p).is_file()) if lists is not None else 0

    known = Counter(c.split for c in clips if c.label not in (UNKNOWN, SILENCE))
    chosen = [c for c in clips if c.label != UNKNOWN] + _choose_unknown(clips, known, config)
    rows = sorted(chosen, key=lambda c: c.relpath)
    has_silence_folder = any(c.label == SILENCE for c in clips)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.silence_percent > 0 and not has_silence_folder:
        wanted = {s: math.ceil(known[s] * config.silence_percent / 100) for s in SPLITS}
        rows += _cut_silence(data_dir, out_dir, wanted, config)

    counts = {s: dict(sorted(Counter(c.label for c in rows if c.split == s).items())) for s in SPLITS}
    for split in SPLITS:
        _write_csv(out_dir / f"{split}.csv", [c for c in rows if c.split == split], out_dir)
    summary = ManifestSummary(out_dir, "lists" if lists is not None else "hash", counts, listed_missing)
    info = {
        "source": str(data_dir),
        "split_by": summary.split_by,
        "settings": {k: _json_value(v) for k, v in asdict(config).items()},
        "counts": counts,
        "listed_missing": listed_missing,
        "kwsbatch": __version__,
    }
    with atomic_write(out_dir / "splits.json") as f:
        f.write(json.dumps(info, indent=2) + "\n")
    return summary


def _json_value(value):
    if isinstance(value, tuple):
        return list(value)
    return "all" if isinstance(value, float) and math.isinf(value) else value


def _scan_words(data_dir: Path, *, skip: Path) -> list[tuple[str, str, Path]]:
    """(label folder, DIR-relative posix path, file) for the clips of the tree, sorted."""
    found = []
    for row in iter_tree(data_dir):
        if row.error:
            raise DatasetError(row.error)
        if row.label is not None and skip not in row.audio_path.parents:
            found.append((row.label, row.audio_path.relative_to(data_dir).as_posix(), row.audio_path))
    return found


def _label_clips(files: Iterable[tuple[str, str, Path]], config: ManifestConfig, split_of: Callable[[str], str]) -> list[Clip]:
    clips, folders = [], set()
    for folder, relpath, path in files:
        folders.add(folder)
        if folder == SILENCE or config.words is None or folder in config.words:
            label = folder
        else:
            label = UNKNOWN  # includes an _unknown_ folder, whose clips are unknowns already
        speaker = speaker_of(path.name) if folder != SILENCE else f"{SILENCE}:{speaker_of(path.name)}"
        clips.append(Clip(path, relpath, label, speaker, folder, split_of(relpath)))
    if not clips:
        raise DatasetError("no audio files in any label folder: expected DIR/<word>/<file>.wav")
    missing = [w for w in (config.words or ()) if w not in folders]
    if missing:
        found = ", ".join(sorted(f for f in folders if f != SILENCE))
        raise DatasetError(f"no folder of clips for {', '.join(missing)} (found: {found})")
    return clips


def _choose_unknown(clips: Sequence[Clip], known: Counter, config: ManifestConfig) -> list[Clip]:
    """A split's unknown clips: those with the smallest seeded hash of their path, so the choice
    depends neither on listing order nor on which other files exist."""
    chosen = []
    for split in SPLITS:
        pool = [c for c in clips if c.label == UNKNOWN and c.split == split]
        if math.isinf(config.unknown_percent):
            chosen += pool
            continue
        wanted = math.ceil(known[split] * config.unknown_percent / 100)
        pool.sort(key=lambda c: hashlib.sha1(f"{config.seed}/{c.relpath}".encode()).digest())
        chosen += pool[:wanted]
    return chosen


def _cut_silence(data_dir: Path, out_dir: Path, wanted: dict[str, int], config: ManifestConfig) -> list[Clip]:
    """Write wanted[split] silence clips under out_dir/_silence_ (replacing an earlier run's)."""
    if not any(wanted.values()):
        return []
    noises = _read_noise(data_dir)
    shares = {"train": 100 - config.validation_percent - config.testing_percent,
              "val": config.validation_percent, "test": config.testing_percent}
    folder = out_dir / SILENCE
    staging = out_dir / f".{SILENCE}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    clips = []
    try:
        for split_index, split in enumerate(SPLITS):
            # Each noise file's stretch for this split: train first, then val, then test.
            start = sum(shares[s] for s in SPLITS[:split_index]) / 100
            end = start + shares[split] / 100
            sources = []
            for name, audio, rate in noises:
                n = round(config.silence_seconds * rate)
                lo, hi = int(start * len(audio)), int(end * len(audio))
                if hi - lo >= n:
                    sources.append((name, audio[lo:hi], rate, n))
            if wanted[split] and not sources:
                raise DatasetError(f"{data_dir / NOISE_FOLDER}: no noise file has {config.silence_seconds:g} s for "
                                   f"its {split} stretch ({shares[split]:g}% of it); add longer recordings or pass --silence-percent 0")
            rng = np.random.default_rng([config.seed, split_index])
            for i in range(wanted[split]):
                name, audio, rate, n = sources[i % len(sources)]
                offset = int(rng.integers(0, len(audio) - n + 1))
                gain = rng.uniform(0, 1)  # TensorFlow's silence volume: uniform in [0, 1)
                clip = np.clip(np.round(audio[offset:offset + n] * gain * 32767), -32768, 32767).astype(np.int16)
                filename = f"{split}_{i:05d}_{name}.wav"
                sf.write(staging / filename, clip, rate, subtype="PCM_16", format="WAV")
                clips.append(Clip(folder / filename, f"{SILENCE}/{filename}", SILENCE,
                                  f"{NOISE_FOLDER}/{name}:{split}", name, split))
        _replace_folder(folder, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return clips


def _read_noise(data_dir: Path) -> list[tuple[str, np.ndarray, int]]:
    folder = data_dir / NOISE_FOLDER
    files = sorted(p for p in folder.iterdir() if is_audio_path(p.name)) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"{data_dir}: no {NOISE_FOLDER} folder with noise recordings to cut _silence_ clips from; "
                           "add one or pass --silence-percent 0")
    noises = []
    for path in files:
        clip = decode_audio(path, max_seconds=None)  # AudioError names the file
        noises.append((path.stem, clip.samples, clip.sample_rate))
    return noises


def _replace_folder(folder: Path, staging: Path) -> None:
    """Move staging to folder; an earlier run's folder is removed only if it holds just WAV files."""
    if folder.exists():
        if not folder.is_dir() or any(not p.is_file() or p.suffix != ".wav" for p in folder.iterdir()):
            raise DatasetError(f"{folder} exists and holds more than silence clips from an earlier run; move it away")
        shutil.rmtree(folder)
    staging.rename(folder)


def _write_csv(path: Path, clips: Sequence[Clip], out_dir: Path) -> None:
    folders: dict[Path, str] = {}  # relpath is slow; a label folder's is computed once
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for c in clips:
            folder = folders.get(c.path.parent) or folders.setdefault(c.path.parent, _relative(c.path.parent, out_dir))
            writer.writerow([f"{folder}/{c.path.name}", c.label, c.speaker, c.word])


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return path.as_posix()
