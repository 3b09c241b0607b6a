"""Training from several manifests at once, each with a weight: `kwsbatch train synth.csv:1 real.csv:4`.

Each source is a manifest and the sampling rate of its clips (sampling.py). The classes are the
union of the sources' labels. Without validation manifests each source gives up its own
held-out slice by the usual speaker hash (data.split_for_validation), so a speaker never lands
on both sides, and validation sees every source.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

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


def as_list(manifests: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str | os.PathLike]:
    """None, one manifest or several, as a list."""
    if manifests is None:
        return []
    return [manifests] if isinstance(manifests, (str, os.PathLike)) else list(manifests)


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
                raise _too_few(source.manifest, val_fraction)
        rows.train += train
        rows.train_sources += [index] * len(train)
        rows.val += val
        rows.val_sources += [index] * len(val)
    for index, manifest in enumerate(val_manifests):
        val = read_manifest(manifest, require_label=True, manifest_format=manifest_format)
        rows.val += val
        rows.val_sources += [index] * len(val)
    if not rows.val:
        raise _too_few(" and ".join(s.manifest for s in sources), val_fraction)
    return rows


def _too_few(manifests: str, val_fraction: float) -> ManifestError:
    return ManifestError(f"{manifests}: too few rows (or speakers) to hold out {val_fraction:.0%} for validation; pass --val")


def describe_sources(
    sources: Sequence[TrainSource], train_of: torch.Tensor, val_of: torch.Tensor | None, weights: torch.Tensor
) -> list[dict]:
    """Per source, for provenance: its manifest's hash, its weight, its training clips, their share
    of each epoch's draws, and its validation clips (0 when validation has its own manifests: val_of None).

    train_of, val_of: (n_clips,) int64 source of each decoded clip; weights: (n_train_clips,) float64.
    """
    draws = torch.zeros(len(sources), dtype=torch.float64).index_add_(0, train_of, weights.double())
    return [
        {
            "manifest": source.manifest,
            "sha256": sha256(source.manifest),
            "weight": source.weight,
            "n_train": int((train_of == i).sum()),
            "n_val": 0 if val_of is None else int((val_of == i).sum()),
            "epoch_share": round(float(draws[i] / draws.sum()), 6),
        }
        for i, source in enumerate(sources)
    ]


def sources_line(described: list[dict], draws: int) -> str:
    """describe_sources() in one line for the training log."""
    names = source_names([entry["manifest"] for entry in described])
    parts = [f"{name} {e['n_train']} clips x {e['weight']:g} ({e['epoch_share']:.0%})" for name, e in zip(names, described)]
    return f"training on {len(described)} manifest(s), {draws} draws per epoch: " + ", ".join(parts)


def source_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for messages: the file names, or the paths where two file names are the same."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a manifest's bytes, for provenance."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
