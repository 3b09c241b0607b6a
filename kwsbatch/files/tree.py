"""Folder-per-label trees: Speech Commands' layout, and a Hugging Face audiofolder with or without metadata.

    ROOT/<label>/.../<clip>.wav   a clip; its label is its first folder under ROOT
    ROOT/_background_noise_/      long noise recordings (Speech Commands, `kwsbatch synth`): not a class
    ROOT/validation_list.txt      optional (Speech Commands): ROOT-relative paths of the validation clips
    ROOT/testing_list.txt         optional: ... of the test clips; a clip in neither list is for training
    ROOT/metadata.csv             a Hugging Face audiofolder's metadata (or metadata.jsonl): the tree's manifest

Not classes either: hidden folders, and a folder of kwsbatch manifests (holding the `splits.json`
that `kwsbatch manifest` and `fetch` write, as DIR/manifests/ does with its cut _silence_ clips).
This module knows the layout's names; manifest.py reads a tree into rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kwsbatch.errors import ManifestError
from kwsbatch.files.dialects import AUDIOFOLDER_FILES

NOISE_FOLDER = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
SPLIT_LISTS = {VALIDATION_LIST: "val", TESTING_LIST: "test"}
SPLITS_RECORD = "splits.json"  # in a folder of manifests written by `kwsbatch manifest`


def speaker_of(filename: str | os.PathLike) -> str:
    """The speaker id of a Speech Commands file name: the part before `_nohash_` (else the stem)."""
    name = os.path.basename(filename)
    speaker = re.sub(r"_nohash_.*$", "", name)
    return os.path.splitext(speaker)[0] if speaker == name else speaker


def is_class_folder(folder: os.DirEntry, *, noise: bool = False) -> bool:
    """Whether a folder directly under a tree's root holds clips of a class (with noise, _background_noise_ counts)."""
    if folder.name.startswith(".") or (folder.name == NOISE_FOLDER and not noise):
        return False
    return not os.path.isfile(os.path.join(folder.path, SPLITS_RECORD))


def read_split_lists(root: str | os.PathLike) -> dict[str, str] | None:
    """ROOT-relative posix path -> "val" or "test" from the list files, or None when the tree has neither."""
    found = False
    splits: dict[str, str] = {}
    for name, split in SPLIT_LISTS.items():
        path = Path(root) / name
        if not path.is_file():
            continue
        found = True
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: cannot read split list ({e})") from None
        for line in lines:
            if line.strip():
                splits[Path(line.strip()).as_posix()] = split
    return splits if found else None


def audiofolder_metadata(folder: str | os.PathLike) -> Path | None:
    """The metadata file of a Hugging Face audiofolder (metadata.csv, else metadata.jsonl), or None."""
    for name in sorted(AUDIOFOLDER_FILES):
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def has_validation_list(path: str | os.PathLike) -> bool:
    """Whether path is a tree (not an audiofolder with metadata) whose validation_list.txt names its validation clips."""
    return os.path.isdir(path) and audiofolder_metadata(path) is None and os.path.isfile(os.path.join(path, VALIDATION_LIST))
