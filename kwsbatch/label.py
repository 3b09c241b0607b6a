"""Labelling: a checkpoint's model on a device, and the output rows it makes of each file's result.

The heavy lifting (workers, decoding, length-sorted batches) is in pipeline.py; this module owns
the model call and the output columns. A file that cannot be read becomes a row with an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from kwsbatch.audio import DEFAULT_MAX_SECONDS, Resampler
from kwsbatch.checkpoint import Checkpoint
from kwsbatch.features import pad_waveforms
from kwsbatch.manifest import ManifestRow
from kwsbatch.pipeline import FileResult, LabelConfig, score_files

BASE_COLUMNS = ("path", "label", "confidence")
WINDOW_COLUMNS = ("path", "start_s", "end_s", "label", "confidence")  # window mode: one row per detection
INFO_COLUMNS = ("duration_s", "sample_rate", "channels", "model", "error")
FILE_COLUMNS = ("file_size", "file_mtime_ns")  # the file as it was labelled: how a rerun tells it changed
UNKNOWN = "_unknown_"  # what --threshold writes for a clip no class is sure enough of


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from kwsbatch.errors import KwsError

        raise KwsError("--device cuda: no CUDA device is available (try --device cpu or auto)")
    return torch.device(name)


def full_float32(device: torch.device) -> None:
    """Run cuDNN's float32 convolutions and LSTMs in float32, not TF32 (process-wide).

    cuDNN uses TF32, a 10-bit mantissa, by default on recent GPUs: on an H200 a clip's confidence
    moved by up to 1.6e-4 with the other clips in its batch, so a file's row depended on which
    files were labelled with it. The model is small, and labelling on a GPU is bound by decoding.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False


class Labeler:
    """A checkpoint's model on a device: scores waveforms and turns results into output rows."""

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "auto", model_id: str = "", threshold: float = 0.0):
        self.checkpoint = checkpoint
        self.threshold = threshold  # below this top probability the label is UNKNOWN
        self.classes = checkpoint.classes
        self.device = resolve_device(device) if isinstance(device, str) else device
        full_float32(self.device)
        self.spotter = checkpoint.build(self.device)
        self.model_id = model_id
        self.sample_rate = checkpoint.feature_config.sample_rate
        self._resample = Resampler(self.sample_rate)
        self._reserved = {*self._own_columns(False), *self._own_columns(True), *FILE_COLUMNS, "true_label"}

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

    def resample(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(n_samples,) float32 at sample_rate -> (n_resampled,) tensor at the model's rate."""
        return self._resample(samples, sample_rate)

    def columns(self, extra_columns: Iterable[str] = (), *, windowed: bool = False, file_columns: bool = False) -> list[str]:
        """Output columns; a manifest's own label column is the truth, carried as true_label."""
        extras = ["true_label" if c == "label" else self._extra_name(c) for c in extra_columns]
        return [*self._own_columns(windowed), *(FILE_COLUMNS if file_columns else ()), *extras]

    def _own_columns(self, windowed: bool) -> list[str]:
        if windowed:
            return [*WINDOW_COLUMNS, *INFO_COLUMNS]
        return [*BASE_COLUMNS, *(f"p_{c}" for c in self.classes), *INFO_COLUMNS]

    def _extra_name(self, column: str) -> str:
        # A manifest column named like one of ours (say "confidence") must not overwrite it.
        return f"manifest_{column}" if column in self._reserved else column

    def input_fields(self, row: ManifestRow) -> dict:
        """The columns an output row takes from its input: the path and the manifest's own columns."""
        out = {"path": row.path}
        if row.label is not None:
            out["true_label"] = row.label
        for column, value in row.extras.items():
            out[self._extra_name(column)] = value
        return out

    def result_fields(self, result: FileResult) -> list[dict]:
        """The model's columns for one file: one row, or in window mode one per detection (at least one)."""
        if result.error:
            return [{"model": self.model_id, "error": result.error}]
        info = {
            "duration_s": f"{result.duration_s:.3f}",
            "sample_rate": result.sample_rate,
            "channels": result.channels,
            "model": self.model_id,
            "error": "",
        }
        p = result.probabilities
        if p is not None:
            best = int(p.argmax())
            scores = {f"p_{c}": f"{q:.6f}" for c, q in zip(self.classes, p)}
            label = self.classes[best] if p[best] >= self.threshold else UNKNOWN
            return [{"label": label, "confidence": f"{p[best]:.6f}", **scores, **info}]
        # Window mode: a file with no detection still gets a row, so every file read is accounted for.
        rows = [
            {"start_s": f"{d.start_s:.3f}", "end_s": f"{d.end_s:.3f}", "label": d.label, "confidence": f"{d.confidence:.6f}", **info}
            for d in result.detections
        ]
        return rows or [info]

    def label_rows(
        self,
        rows: Iterable[ManifestRow],
        *,
        batch_size: int = 64,
        jobs: int = 1,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> Iterator[dict]:
        """One output dict per input row, in input order (clip mode); `jobs` worker threads."""
        config = LabelConfig(batch_size=batch_size, jobs=jobs, max_seconds=max_seconds)
        for task, results in score_files(self, rows, config, ordered=True):
            for row, result in zip(task, results):
                (fields,) = self.result_fields(result)
                yield {**self.input_fields(row), **fields}
