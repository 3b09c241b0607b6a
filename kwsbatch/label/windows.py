"""Long recordings: the detections merged from a file's windows (files/windows.py reads the windows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kwsbatch.classes import is_background


@dataclass(frozen=True)
class Detection:
    start_s: float
    end_s: float
    label: str
    confidence: float  # the highest probability of label among the merged windows


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
