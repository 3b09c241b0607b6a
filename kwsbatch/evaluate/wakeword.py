"""Wake-word evaluation: long recordings and a timestamped truth list, scored as `label --window` scores them.

The truth is a manifest (any format kwsbatch reads, paths relative to it) with one row per spoken
keyword, ``path,start_s,end_s,label``. A recording without keywords is listed once with empty
start_s and end_s, and an empty or background label (`_background_`); a row whose label is a
background name (in underscores: `_unknown_`, `_silence_`, ...) is never an event, times or not.

Each recording is labelled once in window mode (the label pipeline) and each window's best class
kept; for each threshold of the sweep, the windows merge into detections exactly as `label
--window --threshold t` would (label/windows.py, merge_detections), which are matched to the truth:

* a detection matches an event of the same label when their intervals overlap;
* an event is detected when some detection matches it; it counts once however many do, so extra
  detections on one event are neither hits nor false accepts;
* a detection that matches no event is a false accept.

False accepts per hour count over all the recordings' audio; the miss rate is missed events over
events. The operating threshold is the lowest swept threshold whose false accepts per hour are at
most the target: the lowest, as the miss rate only grows with the threshold.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kwsbatch.classes import is_background
from kwsbatch.errors import ManifestError
from kwsbatch.evaluate.config import WakewordConfig
from kwsbatch.evaluate.sweep import SHOWN_THRESHOLDS, THRESHOLDS
from kwsbatch.files.manifest import ManifestRow, is_manifest_name, iter_manifest, manifest_header
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.pipeline import score_files
from kwsbatch.label.rows import FileResult
from kwsbatch.label.windows import Detection, merge_detections
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.model.scorer import Scorer
from kwsbatch.progress import Reporter

EVENT_COLUMNS = ("start_s", "end_s")  # what makes a manifest a wake-word truth list


@dataclass(frozen=True)
class Event:
    start_s: float
    end_s: float
    label: str


@dataclass(frozen=True)
class Recording:
    row: ManifestRow  # the file, as the label pipeline reads it
    events: tuple[Event, ...]


@dataclass(frozen=True, eq=False)  # eq=False: frames have no single truth value
class WakewordEvaluation:
    """A wake-word evaluation: the sweep, the operating threshold and what happened at it."""

    config: WakewordConfig
    hours: float  # audio of the recordings scored
    n_recordings: int
    events: dict[str, int]  # keyword -> events in the recordings scored
    sweep: pd.DataFrame  # threshold, detections, false_accepts, fa_per_hour, missed, miss_rate
    threshold: float | None  # the operating threshold; None when no swept one meets the target
    outcomes: pd.DataFrame  # at the operating threshold (else the last swept): path, start_s, end_s, label, confidence, outcome
    failures: pd.DataFrame  # path, error: recordings that could not be read

    @property
    def n_events(self) -> int:
        return sum(self.events.values())

    def at(self, threshold: float) -> dict[str, Any]:
        """The sweep's row at a swept threshold."""
        return self.sweep[self.sweep["threshold"] == threshold].to_dict("records")[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types, ready for `json.dumps(..., allow_nan=False)`."""
        operating = self.at(self.threshold) if self.threshold is not None else None
        by_label = self.outcomes.groupby(["label", "outcome"]).size().unstack(fill_value=0) if len(self.outcomes) else pd.DataFrame()
        return {
            "window_s": self.config.windows().window_s,
            "hop_s": self.config.windows().hop_s,
            "hours": round(self.hours, 6),
            "n_recordings": self.n_recordings,
            "n_events": self.n_events,
            "events": dict(self.events),
            "target_fa_per_hour": self.config.target_fa_per_hour,
            "threshold": self.threshold,
            "at_threshold": {k: _plain(v) for k, v in operating.items()} if operating else None,
            "by_label_at_threshold": {
                str(label): {k: int(row.get(k, 0)) for k in ("hit", "miss", "false_accept")} for label, row in by_label.iterrows()
            },
            # Every 0.1 here; wakeword_sweep.csv has the whole sweep.
            "sweep": [{k: _plain(v) for k, v in row.items()} for row in self.sweep[self.sweep["threshold"].isin(SHOWN_THRESHOLDS)].to_dict("records")],
            "n_failed": len(self.failures),
            "failures": self.failures.to_dict("records"),
        }


def _plain(value):
    if isinstance(value, (np.integer, int)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def is_event_manifest(path: str | os.PathLike, manifest_format: str | None = None) -> bool:
    """Whether a manifest is a wake-word truth list: a file with start_s and end_s columns."""
    if not os.path.isfile(path) or (manifest_format is None and not is_manifest_name(path)):
        return False
    return set(EVENT_COLUMNS) <= set(manifest_header(path, manifest_format=manifest_format))


def read_recordings(path: str | os.PathLike, classes: Sequence[str], *, manifest_format: str | None = None) -> list[Recording]:
    """The truth list's recordings, in order of first mention, each with its keyword events in time order."""
    rows: dict[str, ManifestRow] = {}
    events: dict[str, list[Event]] = {}
    for row in iter_manifest(path, manifest_format=manifest_format):
        if row.path not in rows:
            if not row.audio_path.is_file():
                raise ManifestError(f"{row.source}: file not found: {row.path}")
            rows[row.path], events[row.path] = row, []
        event = _event(row, classes)
        if event is not None:
            events[row.path].append(event)
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    return [Recording(row, tuple(sorted(events[key], key=lambda e: (e.start_s, e.label)))) for key, row in rows.items()]


def _event(row: ManifestRow, classes: Sequence[str]) -> Event | None:
    """The keyword event a truth row names, or None for a recording listed without one."""
    label = row.label or ""
    start, end = (row.extras.get(column, "").strip() for column in EVENT_COLUMNS)
    if not label or is_background(label):
        return None
    if label not in classes:
        raise ManifestError(f"{row.source}: label {label!r} is not one the model knows ({', '.join(classes)})")
    if not start or not end:
        raise ManifestError(f"{row.source}: keyword {label!r} needs start_s and end_s (seconds into the recording)")
    try:
        start_s, end_s = float(start), float(end)
    except ValueError:
        raise ManifestError(f"{row.source}: start_s {start!r} and end_s {end!r} must be numbers of seconds") from None
    if not 0 <= start_s < end_s < math.inf:
        raise ManifestError(f"{row.source}: need 0 <= start_s < end_s, got {start} and {end}")
    return Event(start_s, end_s, label)


def match_events(detections: Sequence[Detection], events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray]:
    """(detected: (n_events,) bool, matched: (n_detections,) bool) under the overlap rule of the module docstring."""
    if not detections or not events:
        return np.zeros(len(events), dtype=bool), np.zeros(len(detections), dtype=bool)
    d_start, d_end = (np.array([getattr(d, name) for d in detections]) for name in ("start_s", "end_s"))
    e_start, e_end = (np.array([getattr(e, name) for e in events]) for name in ("start_s", "end_s"))
    same = np.array([d.label for d in detections])[:, None] == np.array([e.label for e in events])[None, :]
    overlap = same & (d_start[:, None] < e_end[None, :]) & (e_start[None, :] < d_end[:, None])
    return overlap.any(axis=0), overlap.any(axis=1)


def evaluate_wakeword(
    manifest: str | os.PathLike,
    model: str | os.PathLike,
    config: WakewordConfig = WakewordConfig(),
    *,
    device: str = "auto",
    batch_size: int = 64,
    jobs: int = 1,
    reporter: Reporter | None = None,
    manifest_format: str | None = None,
) -> tuple[WakewordEvaluation, dict]:
    """Score the truth list's recordings with a model: (the evaluation, model info)."""
    reporter = reporter or Reporter()
    checkpoint = load_checkpoint(model)
    recordings = read_recordings(manifest, checkpoint.classes, manifest_format=manifest_format)
    scorer = Scorer(checkpoint, device=device)
    results: dict[str, FileResult] = {}
    reporter.start("evaluating", len(recordings))
    label_config = LabelConfig(batch_size=batch_size, jobs=jobs, window=config.windows())
    for task, task_results in score_files(scorer, [r.row for r in recordings], label_config):
        results.update((row.path, result) for row, result in zip(task, task_results))
        reporter.advance(len(task))
    reporter.stop()
    info = {"model": str(model), "model_id": scorer.model_id, "classes": list(checkpoint.classes)}
    return sweep_recordings(recordings, [results[r.row.path] for r in recordings], checkpoint.classes, config), info


def sweep_recordings(
    recordings: Sequence[Recording], results: Sequence[FileResult], classes: Sequence[str], config: WakewordConfig,
    thresholds: Sequence[float] = THRESHOLDS,
) -> WakewordEvaluation:
    """Match each recording's detections at every threshold; results are the label pipeline's, with windows."""
    failed = [(r, res) for r, res in zip(recordings, results) if res.error]
    scored = [(r, res) for r, res in zip(recordings, results) if not res.error]
    hours = sum(res.duration_s for _, res in scored) / 3600
    events = Counter(e.label for r, _ in scored for e in r.events)
    n_events = sum(events.values())
    sweep = []
    for threshold in thresholds:
        detections = false_accepts = missed = 0
        for recording, result in scored:
            found = merge_detections(result.windows, classes, threshold)
            detected, matched = match_events(found, recording.events)
            detections, false_accepts, missed = detections + len(found), false_accepts + int((~matched).sum()), missed + int((~detected).sum())
        sweep.append({
            "threshold": threshold, "detections": detections, "false_accepts": false_accepts,
            "fa_per_hour": false_accepts / hours if hours else math.nan, "missed": missed, "miss_rate": missed / n_events if n_events else math.nan,
        })
    sweep = pd.DataFrame(sweep)
    meeting = sweep[sweep["fa_per_hour"] <= config.target_fa_per_hour]["threshold"]
    threshold = float(meeting.iloc[0]) if len(meeting) else None
    return WakewordEvaluation(
        config=config, hours=hours, n_recordings=len(scored), events=dict(sorted(events.items())), sweep=sweep, threshold=threshold,
        outcomes=_outcomes(scored, classes, threshold if threshold is not None else thresholds[-1]),
        failures=pd.DataFrame([{"path": r.row.path, "error": res.error} for r, res in failed], columns=["path", "error"]),
    )


def _outcomes(scored: Sequence[tuple[Recording, FileResult]], classes: Sequence[str], threshold: float) -> pd.DataFrame:
    """Every detection (a hit or a false accept) and every missed event at a threshold: the clips to listen to."""
    rows = []
    for recording, result in scored:
        found = merge_detections(result.windows, classes, threshold)
        detected, matched = match_events(found, recording.events)
        path = recording.row.path
        here = [(path, d.start_s, d.end_s, d.label, d.confidence, "hit" if hit else "false_accept") for d, hit in zip(found, matched)]
        here += [(path, e.start_s, e.end_s, e.label, math.nan, "miss") for e, seen in zip(recording.events, detected) if not seen]
        rows += sorted(here, key=lambda row: (row[1], row[3]))
    return pd.DataFrame(rows, columns=["path", "start_s", "end_s", "label", "confidence", "outcome"])
