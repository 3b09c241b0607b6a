"""From manifest rows to waveforms: parallel decoding in chunks, training sets, validation splits."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from kwsbatch.files.audio import DecodedClip, Resampler, decode_many
from kwsbatch.files.manifest import ManifestRow, chunked
from kwsbatch.progress import Reporter
from kwsbatch.settings import ONE_PER_CORE, worker_count


def decode_chunks(
    chunks: Iterable[list[ManifestRow]], jobs: int, max_seconds: float | None
) -> Iterator[tuple[list[ManifestRow], list[DecodedClip | str]]]:
    """Yield (chunk, decoded) pairs in order; with jobs > 1, worker processes decode ahead.

    Each decoded item is a DecodedClip, or the one-line reason the file could not be read.
    jobs 0: one worker per core.
    """
    jobs = worker_count(jobs)
    if jobs <= 1:
        for chunk in chunks:
            yield chunk, decode_many(_readable_paths(chunk), max_seconds)
        return
    from joblib import Parallel, delayed

    pending: collections.deque[list[ManifestRow]] = collections.deque()

    def tasks():
        for chunk in chunks:
            pending.append(chunk)
            yield delayed(decode_many)(_readable_paths(chunk), max_seconds)

    # Workers only decode (numpy + soundfile, no torch), so they start fast and leave the cores'
    # arithmetic to the model; pre_dispatch bounds how far ahead they read, and so memory.
    parallel = Parallel(n_jobs=jobs, return_as="generator", pre_dispatch="2*n_jobs", backend="loky")
    for decoded in parallel(tasks()):
        yield pending.popleft(), decoded


def _readable_paths(chunk: list[ManifestRow]) -> list[str | tuple[str, float, float | None] | None]:
    """Paths (or segments) to decode; None for rows already known to be unreadable."""
    return [
        None if row.error else str(row.audio_path) if row.offset_s is None else (str(row.audio_path), row.offset_s, row.duration_s)
        for row in chunk
    ]


@dataclass
class ClipSet:
    """Decoded, resampled clips with their class indices and sources, and the rows that could not be read."""

    waveforms: list[torch.Tensor]  # each (n_samples,) float32 at the model's rate
    targets: torch.Tensor  # (n_clips,) int64 class indices
    rows: list[ManifestRow]
    failures: list[tuple[ManifestRow, str]]
    sources: torch.Tensor  # (n_clips,) int64: which manifest each clip came from (sources.py)

    def __len__(self) -> int:
        return len(self.waveforms)


def load_clips(
    rows: list[ManifestRow],
    classes: tuple[str, ...],
    sample_rate: int,
    *,
    sources: Sequence[int] | None = None,
    jobs: int = ONE_PER_CORE,
    max_seconds: float | None = None,
    reporter: Reporter | None = None,
    description: str = "loading",
) -> ClipSet:
    """Decode every row into memory; unreadable files are set aside, not fatal. sources: one per row (default 0)."""
    reporter = reporter or Reporter()
    index = {c: i for i, c in enumerate(classes)}
    resample = Resampler(sample_rate)
    source_of = iter(sources if sources is not None else [0] * len(rows))
    waveforms, targets, kept, kept_sources, failures = [], [], [], [], []
    reporter.start(description, len(rows))
    for chunk, decoded in decode_chunks(chunked(rows, 256), jobs, max_seconds):
        for row, clip, source in zip(chunk, decoded, source_of):
            if isinstance(clip, DecodedClip):
                waveforms.append(resample(clip.samples, clip.sample_rate))
                targets.append(index[row.label])
                kept.append(row)
                kept_sources.append(source)
            else:
                failures.append((row, clip))
        reporter.advance(len(chunk))
    reporter.stop()
    return ClipSet(waveforms, torch.tensor(targets, dtype=torch.long), kept, failures, torch.tensor(kept_sources, dtype=torch.long))


def split_for_validation(rows: list[ManifestRow], fraction: float) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """A deterministic train/validation split by a stable hash of each row's speaker (or path).

    Grouping by the manifest's ``speaker`` column, when it has one, keeps a voice out of both sides.
    """

    def bucket(row: ManifestRow) -> float:
        key = row.extras.get("speaker") or row.path
        return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [r for r in rows if bucket(r) >= fraction]
    val = [r for r in rows if bucket(r) < fraction]
    return train, val
