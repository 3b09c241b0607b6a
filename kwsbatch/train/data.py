"""From manifest rows to waveforms in memory (read by the loader's workers), training sets, validation splits."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kwsbatch.files.loader import Piece, ReadConfig, plan_tasks, read_task, run_tasks
from kwsbatch.files.manifest import ManifestRow
from kwsbatch.progress import Reporter
from kwsbatch.settings import ONE_PER_CORE, worker_count

TASK_CLIPS = 256  # clips a worker reads at a time


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

    @functools.cached_property
    def lengths(self) -> torch.Tensor:
        """(n_clips,) int64: each clip's samples."""
        return torch.tensor([len(wave) for wave in self.waveforms], dtype=torch.long)


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
    """Decode every row into memory, once, by the loader's workers; unreadable files are set aside, not fatal.

    sources: one per row (default 0). Each clip is a view into its task's buffer, which the workers
    filled in shared memory.
    """
    reporter = reporter or Reporter()
    index = {c: i for i, c in enumerate(classes)}
    sources = sources if sources is not None else [0] * len(rows)
    read = ReadConfig(sample_rate=sample_rate, max_seconds=max_seconds)
    waveforms, targets, kept, kept_sources, failures = [], [], [], [], []
    reporter.start(description, len(rows))
    loaded = run_tasks(
        plan_tasks(rows, read, TASK_CLIPS), functools.partial(read_task, config=read), workers=worker_count(jobs), died=_worker_died
    )
    for pieces, task in loaded:
        clips = {}  # piece index -> its clip
        for batch in task.batches:
            for row, (piece, length) in enumerate(zip(batch.pieces, batch.lengths.tolist())):
                clips[piece] = batch.waves[row, :length]
        for i, (piece, audio) in enumerate(zip(pieces, task.files)):
            if audio.error:
                failures.append((piece.row, audio.error))
                continue
            waveforms.append(clips[i])
            targets.append(index[piece.row.label])
            kept.append(piece.row)
            kept_sources.append(sources[piece.file])  # a piece's file is its row's number
        reporter.advance(len(pieces))
    reporter.stop()
    return ClipSet(waveforms, torch.tensor(targets, dtype=torch.long), kept, failures, torch.tensor(kept_sources, dtype=torch.long))


def _worker_died(task: list[Piece]) -> str:
    return f"a worker process died while reading the clips from {task[0].row.source} on"


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
