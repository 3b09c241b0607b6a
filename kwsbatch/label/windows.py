"""Long recordings: the detections merged from a file's scored windows (files/windows.py reads the windows).

Each window's score is kept (28 bytes: 2 MB for ten hours at a 0.5 s hop). A window counts toward a
detection when its most probable class is a keyword (not a background class) with at least the
threshold's probability; overlapping counted windows of one keyword merge into one detection.
`merge_detections` is that rule, applied to a file's scored windows: `label --window --threshold`
applies it once, `evaluate` on long recordings at every threshold it sweeps.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kwsbatch.classes import is_background


@dataclass(frozen=True)
class Detection:
    start_s: float
    end_s: float
    label: str
    confidence: float  # the highest probability of label among the merged windows


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
