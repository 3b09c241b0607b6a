"""Training from several manifests at once, each with a weight: `kwsbatch train synth.csv:1 real.csv:4`.

Each source is a manifest and the sampling rate of its clips (sampling.py). The classes are the
union of the sources' labels. Without validation manifests each source gives up its own
held-out slice by the usual speaker hash (data.split_for_validation), so a speaker never lands
on both sides, and validation sees every source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kwsbatch.errors import ManifestError
from kwsbatch.files.manifest import ManifestRow, read_manifest
from kwsbatch.train.data import split_for_validation


@dataclass(frozen=True)
class TrainSource:
    manifest: str  # as given, for messages and provenance
    weight: float = 1.0  # sampling rate of each of its clips, relative to the other sources'

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"{self.manifest}: the weight must be a positive number, got {self.weight:g}")

    def spelled(self) -> str:
        """As it would be typed: the manifest, with ':weight' when the weight is not 1."""
        return self.manifest if self.weight == 1 else f"{self.manifest}:{self.weight:g}"


@dataclass
class SourceRows:
    """Manifest rows of a training run, each with the index of the source (or validation manifest) it came from."""

    train: list[ManifestRow]
    train_sources: list[int]
    val: list[ManifestRow]
    val_sources: list[int]  # into the training sources when split from them, else into the validation manifests


def parse_source(text: str) -> TrainSource:
    """'path' or 'path:weight'. The text after the last ':' is a weight only when it reads as a
    number and the whole text is not an existing file, so paths with ':' in them still work.

    ValueError for a weight that is not a positive number, or for text after ':' that is not a
    number when what comes before it is an existing file.
    """
    path, colon, suffix = text.rpartition(":")
    if not colon or not path or os.path.isfile(text):
        return TrainSource(text)
    try:
        weight = float(suffix)
    except ValueError:
        if os.path.isfile(path):
            raise ValueError(f"{text}: the weight after ':' must be a positive number, got {suffix!r}") from None
        return TrainSource(text)
    return TrainSource(path, weight)


def as_sources(manifests: str | os.PathLike | TrainSource | Sequence[str | os.PathLike | TrainSource]) -> list[TrainSource]:
    """One manifest or several, as weighted sources (a plain path has weight 1)."""
    if isinstance(manifests, (str, os.PathLike, TrainSource)):
        manifests = [manifests]
    sources = [m if isinstance(m, TrainSource) else TrainSource(str(m)) for m in manifests]
    if not sources:
        raise ValueError("no training manifest given")
    return sources


def read_sources(
    sources: Sequence[TrainSource], val_manifests: Sequence[str | os.PathLike], val_fraction: float, manifest_format: str | None = None
) -> SourceRows:
    """Every source's rows; validation rows from val_manifests, else held out of each source."""
    rows = SourceRows([], [], [], [])
    for index, source in enumerate(sources):
        manifest = read_manifest(source.manifest, require_label=True, manifest_format=manifest_format)
        if val_manifests:
            train, val = manifest, []
        else:
            train, val = split_for_validation(manifest, val_fraction)
            if not train:
                raise ManifestError(f"{source.manifest}: too few rows (or speakers) to hold out {val_fraction:.0%} for validation; pass --val")
        rows.train += train
        rows.train_sources += [index] * len(train)
        rows.val += val
        rows.val_sources += [index] * len(val)
    for index, manifest in enumerate(val_manifests):
        val = read_manifest(manifest, require_label=True, manifest_format=manifest_format)
        rows.val += val
        rows.val_sources += [index] * len(val)
    if not rows.val:
        names = " and ".join(s.manifest for s in sources)
        raise ManifestError(f"{names}: too few rows (or speakers) to hold out {val_fraction:.0%} for validation; pass --val")
    return rows


def source_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for messages: the file names, or the paths where two file names are the same."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]
