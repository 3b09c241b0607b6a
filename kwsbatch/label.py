"""Batched labelling: rows in, one prediction row per file out, in input order.

Files are decoded in chunks of one batch (in worker processes with jobs > 1, overlapping the
model's work), resampled next to the model, and scored as padded batches on the model's device.
A file that cannot be read becomes a row with an error; the batch goes on without it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from kwsbatch.atomic import atomic_write
from kwsbatch.audio import DEFAULT_MAX_SECONDS, DecodedClip, Resampler
from kwsbatch.checkpoint import Checkpoint
from kwsbatch.data import chunked, decode_chunks
from kwsbatch.features import pad_waveforms
from kwsbatch.manifest import ManifestRow

BASE_COLUMNS = ("path", "label", "confidence")
INFO_COLUMNS = ("duration_s", "sample_rate", "channels", "model", "error")
UNKNOWN = "_unknown_"  # what --threshold writes for a clip no class is sure enough of


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from kwsbatch.errors import KwsError

        raise KwsError("--device cuda: no CUDA device is available (try --device cpu or auto)")
    return torch.device(name)


class Labeler:
    """A checkpoint's model on a device, scoring lists of waveforms or streams of manifest rows."""

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "auto", model_id: str = "", threshold: float = 0.0):
        self.checkpoint = checkpoint
        self.threshold = threshold  # below this top probability the label is UNKNOWN
        self.classes = checkpoint.classes
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.spotter = checkpoint.build(self.device)
        self.model_id = model_id
        self.sample_rate = checkpoint.feature_config.sample_rate
        self._resample = Resampler(self.sample_rate)

    def probabilities(self, waveforms: list[torch.Tensor]) -> np.ndarray:
        """(batch, n_classes) class probabilities for 1-D waveforms at the model's rate."""
        batch, lengths = pad_waveforms(waveforms, min_samples=self.checkpoint.feature_config.n_fft)
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.pin_memory()
        with torch.inference_mode():
            logits = self.spotter(batch.to(self.device, non_blocking=cuda), lengths.to(self.device))
            probs = torch.softmax(logits.float() / self.checkpoint.temperature, dim=1)
        return probs.cpu().numpy()

    def columns(self, extra_columns: Iterable[str] = ()) -> list[str]:
        """Output columns; a manifest's own label column is the truth, carried as true_label."""
        extras = ["true_label" if c == "label" else self._extra_name(c) for c in extra_columns]
        return [*self._own_columns, *extras]

    @property
    def _own_columns(self) -> list[str]:
        return [*BASE_COLUMNS, *(f"p_{c}" for c in self.classes), *INFO_COLUMNS]

    def _extra_name(self, column: str) -> str:
        # A manifest column named like one of ours (say "confidence") must not overwrite it.
        return f"manifest_{column}" if column in self._own_columns or column == "true_label" else column

    def label_rows(
        self,
        rows: Iterable[ManifestRow],
        *,
        batch_size: int = 64,
        jobs: int = 1,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> Iterator[dict]:
        """One output dict per input row, in input order; decoding runs in `jobs` processes."""
        for chunk, decoded in decode_chunks(chunked(rows, batch_size), jobs, max_seconds):
            yield from self._score_chunk(chunk, decoded)

    def _score_chunk(self, chunk: list[ManifestRow], decoded: list[DecodedClip | str]) -> list[dict]:
        out = [self._base_row(row) for row in chunk]
        ready = [(i, clip) for i, clip in enumerate(decoded) if isinstance(clip, DecodedClip)]
        for i, clip in enumerate(decoded):
            if not isinstance(clip, DecodedClip):
                out[i]["error"] = chunk[i].error or clip
        if ready:
            waves = [self._resample(clip.samples, clip.sample_rate) for _, clip in ready]
            probs = self.probabilities(waves)
            for (i, clip), p in zip(ready, probs):
                best = int(p.argmax())
                out[i].update(
                    label=self.classes[best] if p[best] >= self.threshold else UNKNOWN,
                    confidence=f"{p[best]:.6f}",
                    duration_s=f"{clip.duration_s:.3f}",
                    sample_rate=clip.sample_rate,
                    channels=clip.channels,
                    **{f"p_{c}": f"{q:.6f}" for c, q in zip(self.classes, p)},
                )
        return out

    def _base_row(self, row: ManifestRow) -> dict:
        out = {"path": row.path, "model": self.model_id, "error": ""}
        if row.label is not None:
            out["true_label"] = row.label
        for column, value in row.extras.items():
            out[self._extra_name(column)] = value
        return out


def write_label_csv(
    results: Iterable[dict],
    out: str | os.PathLike | None,
    columns: list[str],
    *,
    on_row: Callable[[dict], None] | None = None,
) -> None:
    """Stream rows to a CSV, atomically replacing out at the end (stdout when out is None or '-')."""
    if out is None or str(out) == "-":
        import sys

        _write_rows(sys.stdout, results, columns, on_row)
        return
    with atomic_write(Path(out), "w", newline="", encoding="utf-8") as f:
        _write_rows(f, results, columns, on_row)


def _write_rows(f, results: Iterable[dict], columns: list[str], on_row) -> None:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
    writer.writeheader()
    for result in results:
        writer.writerow(result)
        if on_row is not None:
            on_row(result)
