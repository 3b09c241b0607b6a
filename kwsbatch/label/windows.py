"""Long recordings: fixed windows slid over a file read in blocks, and detections merged from them.

A one-hour recording is never held whole: the reader keeps one block (a minute) plus one window
of audio, so memory does not depend on the file's length. Windows start every hop on a grid from
0; when the grid leaves an uncovered tail, one more window is aligned to the file's end, so the
last seconds are always heard. A file shorter than one window is a single window, the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


class DetectionMerger:
    """Merges one file's windows, fed in time order, into detections of the keyword classes.

    A window whose best class is a keyword extends the open detection of that keyword when the
    two overlap, else starts a new one. Background classes (``_silence_``, ``_unknown_``: names
    in underscores) are never detections. Each keyword is tracked on its own, so detections of
    different keywords may overlap.
    """

    def __init__(self, classes: tuple[str, ...], sample_rate: int):
        self.classes = classes
        self.sample_rate = sample_rate
        self._open: dict[int, list] = {}  # class index -> [start_frame, end_frame, confidence]
        self._closed: list[tuple[int, int, int, float]] = []

    def add(self, start: int, end: int, probabilities: np.ndarray) -> None:
        best = int(probabilities.argmax())
        if is_background(self.classes[best]):
            return
        confidence = float(probabilities[best])
        current = self._open.get(best)
        if current is not None and start < current[1]:
            current[1] = max(current[1], end)
            current[2] = max(current[2], confidence)
            return
        if current is not None:
            self._closed.append((current[0], current[1], best, current[2]))
        self._open[best] = [start, end, confidence]

    def detections(self) -> list[Detection]:
        """All detections, by start time then label."""
        spans = self._closed + [(s, e, c, p) for c, (s, e, p) in self._open.items()]
        rate = self.sample_rate
        return [
            Detection(s / rate, e / rate, self.classes[c], p)
            for s, e, c, p in sorted(spans, key=lambda span: (span[0], self.classes[span[2]]))
        ]
