"""Long recordings: fixed windows slid over a file read in blocks, and detections merged from them.

A one-hour recording is never held whole: the reader keeps one block (a minute) plus one window
of audio, so memory does not depend on the file's length (each window's score is kept: 28 bytes,
2 MB for ten hours at a 0.5 s hop). Windows start every hop on a grid from 0; when the grid
leaves an uncovered tail, one more window is aligned to the file's end, so the last seconds are
always heard. A file shorter than one window is a single window, the whole file.

A window counts toward a detection when its most probable class is a keyword (not a background
class) with at least the threshold's probability; overlapping counted windows of one keyword merge
into one detection. `merge_detections` is that rule, applied to a file's scored windows: `label
--window --threshold` applies it once, `evaluate` on long recordings at every threshold it sweeps.
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from kwsbatch.classes import is_background
from kwsbatch.errors import AudioError
from kwsbatch.files.audio import read_mono, reading_errors
from kwsbatch.label.config import WindowConfig

BLOCK_SECONDS = 60.0  # audio read from disk at a time


@dataclass(frozen=True)
class Detection:
    start_s: float
    end_s: float
    label: str
    confidence: float  # the highest probability of label among the merged windows


class WindowReader:
    """Iterate (start_frame, end_frame, mono samples) windows of one file, at the file's own rate.

    After iteration, ``frames`` is the number of frames read: the file's true length even when its
    header was wrong about it.
    """

    def __init__(self, path: str | os.PathLike, config: WindowConfig, *, block_s: float = BLOCK_SECONDS):
        self.path = path
        self.config = config
        self.block_s = block_s
        self.sample_rate = 0
        self.channels = 0
        self.frames = 0

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        with reading_errors(self.path), sf.SoundFile(self.path) as f:
            self.sample_rate, self.channels = f.samplerate, f.channels
            window = max(1, round(self.config.window_s * f.samplerate))
            hop = max(1, round(self.config.hop_s * f.samplerate))
            block = max(window, round(self.block_s * f.samplerate))
            buffer, buffer_start, start, covered, end_of_file = np.zeros(0, np.float32), 0, 0, 0, False
            while True:
                while not end_of_file and buffer_start + len(buffer) < start + window:
                    data = read_mono(f, block, self.path)
                    end_of_file = len(data) < block
                    if len(data):
                        buffer = np.concatenate([buffer, data])
                buffer_end = buffer_start + len(buffer)
                self.frames = buffer_end
                if buffer_end < start + window:
                    break
                yield start, start + window, buffer[start - buffer_start : start - buffer_start + window].copy()
                covered, start = start + window, start + hop
                # Keep from the last window's start on: the end-aligned tail window starts after it.
                keep_from = start - hop
                if keep_from - buffer_start >= block:
                    buffer, buffer_start = buffer[keep_from - buffer_start :], keep_from
            if buffer_end == 0:
                raise AudioError(f"{self.path}: contains no samples")
            if buffer_end > covered:
                tail_start = max(0, buffer_end - window)
                yield tail_start, buffer_end, buffer[tail_start - buffer_start :].copy()


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class WindowScores:
    """One file's scored windows, in time order: where each lies and its most probable class."""

    sample_rate: int
    starts: np.ndarray  # (n_windows,) int64, first frame at the file's own rate
    ends: np.ndarray  # (n_windows,) int64, one past the last frame
    best: np.ndarray  # (n_windows,) int64, index of the most probable class
    confidence: np.ndarray  # (n_windows,) float32, that class's probability


def merge_detections(windows: WindowScores, classes: Sequence[str], threshold: float = 0.0) -> list[Detection]:
    """The detections of a file's windows at a threshold, by start time then label.

    A window counts when its best class is a keyword with probability >= threshold. Counted
    windows of one keyword merge while each starts before the detection so far ends (windows that
    only touch stay apart); a detection keeps the highest confidence among its windows. Each
    keyword is merged on its own, so detections of different keywords may overlap.
    """
    spans = []
    for index, label in enumerate(classes):
        chosen = (windows.best == index) & (windows.confidence >= threshold)
        if is_background(label) or not chosen.any():
            continue
        starts, ends, confidence = windows.starts[chosen], windows.ends[chosen], windows.confidence[chosen]
        reach = np.maximum.accumulate(ends)  # where the detection so far ends, after each window
        first = np.flatnonzero(np.concatenate([[True], starts[1:] >= reach[:-1]]))  # windows that start a detection
        for start, end, best in zip(starts[first], np.maximum.reduceat(ends, first), np.maximum.reduceat(confidence, first)):
            spans.append((int(start), label, int(end), float(best)))
    rate = windows.sample_rate
    return [Detection(start / rate, end / rate, label, best) for start, label, end, best in sorted(spans)]


class DetectionMerger:
    """Collects one file's windows, fed in time order, and merges them into detections at a threshold."""

    def __init__(self, classes: tuple[str, ...], sample_rate: int, *, threshold: float = 0.0):
        self.classes = classes
        self.sample_rate = sample_rate
        self.threshold = threshold
        self._starts, self._ends, self._best = array.array("q"), array.array("q"), array.array("q")
        self._confidence = array.array("f")

    def add(self, start: int, end: int, probabilities: np.ndarray) -> None:
        """One window: its frames at the file's rate and its (n_classes,) probabilities."""
        best = int(probabilities.argmax())
        self._starts.append(start)
        self._ends.append(end)
        self._best.append(best)
        self._confidence.append(probabilities[best])

    def windows(self) -> WindowScores:
        return WindowScores(
            self.sample_rate,
            np.frombuffer(self._starts, dtype=np.int64).copy(),
            np.frombuffer(self._ends, dtype=np.int64).copy(),
            np.frombuffer(self._best, dtype=np.int64).copy(),
            np.frombuffer(self._confidence, dtype=np.float32).copy(),
        )

    def detections(self) -> list[Detection]:
        return merge_detections(self.windows(), self.classes, self.threshold)
