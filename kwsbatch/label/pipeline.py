"""The labelling pipeline: manifest rows in, one result per file out, as fast as the device allows.

Rows are cut into tasks of ``batch_size * sort_window`` upcoming files (or windows of long
recordings, which window mode cuts into pieces of about a minute). The loading engine
(files/loader.py) reads each task in a worker process into length-sorted, padded batches; here,
in the main process, the scorer turns each batch into probabilities on its device, and the pieces
of each file come together into its result. Results come back a task at a time, in input order or
as tasks finish; at most two tasks per worker are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from kwsbatch.files.loader import LoadedTask, Piece, ReadConfig, one_torch_thread, plan_tasks, read_task, run_tasks
from kwsbatch.files.manifest import ManifestRow
from kwsbatch.files.windowing import WindowConfig
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.rows import FileResult
from kwsbatch.label.windows import DetectionMerger
from kwsbatch.model.scorer import Scorer

# What turns manifest rows into (rows, their results): score_files bound to a scorer, or the
# cluster's score_on_cluster bound to a client. ordered=True keeps input order.
Score = Callable[..., Iterator[tuple[list[ManifestRow], list[FileResult]]]]


def score_files(
    scorer: Scorer, rows: Iterable[ManifestRow], config: LabelConfig, *, ordered: bool = False, in_process: bool = False
) -> Iterator[tuple[list[ManifestRow], list[FileResult]]]:
    """Yield (rows, their results) as their files are done: in input order when ordered, else as they come.

    in_process: read in this process, with no worker processes (a Dask worker, which may not have children).
    """
    read = ReadConfig(
        sample_rate=scorer.sample_rate,
        batch_size=config.batch_size,
        min_samples=scorer.checkpoint.feature_config.n_fft,
        max_seconds=config.max_seconds,
        window=config.window,
    )
    # On the CPU the workers compute the features too: the main process's one core then runs only
    # the LSTM, and the work splits evenly over the cores (measured in docs/performance.md).
    on_cpu = scorer.device.type == "cpu"
    tasks = run_tasks(
        plan_tasks(rows, read, config.task_size),
        functools.partial(read_task, config=read, featurize=scorer.featurize if on_cpu else None),
        workers=0 if in_process else config.workers,
        died=_worker_died,
        ordered=ordered,
        pin_memory=scorer.device.type == "cuda",
    )
    files = _Files(scorer.classes, config.window)
    with one_torch_thread(scorer.device):  # reading here too, when in_process
        for pieces, loaded in tasks:
            done = files.add(pieces, loaded, scorer.score([b.inputs for b in loaded.batches], featurized=on_cpu))
            if done:
                yield [row for row, _ in done], [result for _, result in done]


def _worker_died(task: list[Piece]) -> str:
    # Killed (out of memory, say) or crashed in a decoder: the finished tasks are kept, and a rerun resumes.
    return f"a worker process died while labelling the files from {task[0].row.source} on; run again to resume"


class _Files:
    """Puts each file's result together from its pieces, which may come in several tasks."""

    def __init__(self, classes: tuple[str, ...], window: WindowConfig | None):
        self.classes, self.window = classes, window
        self.open: dict[int, tuple[ManifestRow, FileResult, list]] = {}  # file number -> row, result so far, windows

    def add(self, pieces: list[Piece], loaded: LoadedTask, probabilities: np.ndarray) -> list[tuple[ManifestRow, FileResult]]:
        """Take a task's probabilities ((rows of all its batches, n_classes), in batch order); return the files it completed."""
        windows: list[list] = [[] for _ in pieces]  # per piece: (start, end, probabilities)
        rows = (row for batch in loaded.batches for row in zip(batch.pieces, batch.spans))
        for (index, (start, end)), p in zip(rows, probabilities):
            windows[index].append((start, end, p))
        done = []
        for piece, audio, own in zip(pieces, loaded.files, windows):
            row, result, seen = self.open.setdefault(piece.file, (piece.row, FileResult(), []))
            result.error = result.error or audio.error
            if audio.frames is not None:
                result.sample_rate, result.channels = audio.sample_rate, audio.channels
                result.duration_s = audio.frames / audio.sample_rate
                result.warning = audio.warning
            seen.append(own)
            if len(seen) == piece.pieces:
                del self.open[piece.file]
                done.append((row, self._finish(result, seen)))
        return done

    def _finish(self, result: FileResult, seen: list[list]) -> FileResult:
        if result.error:
            return result
        windows = sorted((w for own in seen for w in own), key=lambda w: w[:2])  # pieces may come out of order
        if self.window is None:
            result.probabilities = windows[0][2]
            return result
        merger = DetectionMerger(self.classes, result.sample_rate, threshold=self.window.threshold)
        for start, end, p in windows:
            merger.add(start, end, p)
        result.windows = merger.windows()
        result.detections = merger.detections()
        return result
