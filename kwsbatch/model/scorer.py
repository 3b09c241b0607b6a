"""A checkpoint's model on a device: 1-D waveforms in, class probabilities out.

Everything that turns those probabilities into output rows is the label stage's (label/rows.py);
this class knows nothing of files, manifests or columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from kwsbatch.files.loader import pad_waveforms
from kwsbatch.files.resample import Resampler
from kwsbatch.model.checkpoint import Checkpoint, checkpoint_id
from kwsbatch.model.device import full_float32, resolve_device


class Scorer:
    """Scores waveforms at the model's rate in padded batches; resamples other rates to it."""

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "auto"):
        self.checkpoint = checkpoint
        self.classes = checkpoint.classes
        self.device = resolve_device(device) if isinstance(device, str) else device
        full_float32(self.device)
        self.spotter = checkpoint.build(self.device)
        self.model_id = checkpoint_id(checkpoint)  # what output rows name the model by
        self.sample_rate = checkpoint.feature_config.sample_rate
        self._resample = Resampler(self.sample_rate)

    def probabilities(self, waveforms: list[torch.Tensor]) -> np.ndarray:
        """(batch, n_classes) class probabilities for 1-D waveforms at the model's rate, in one batch."""
        return self.score([pad_waveforms(waveforms, min_samples=self.checkpoint.feature_config.n_fft)])

    def featurize(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(waves, lengths) -> the model's (batch, frames, n_mfcc) features and frame lengths, on the CPU: in a loader worker."""
        with torch.no_grad():
            return self.spotter.frontend(*batch)

    def score(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, featurized: bool = False) -> np.ndarray:
        """(rows of all batches, n_classes) probabilities for padded batches: each (batch, samples) waves and (batch,) lengths,
        or with featurized, (batch, frames, n_mfcc) features and frame lengths.

        On a GPU the batches queue up on the device and the probabilities come back in one copy at
        the end: no host synchronisation per batch. Lengths stay on the CPU, where the model reads them.
        """
        cuda = self.device.type == "cuda"
        model = self.spotter.head if featurized else self.spotter
        out = []
        with torch.inference_mode():
            for inputs, lengths in batches:
                logits = model(inputs.to(self.device, non_blocking=cuda), lengths)
                out.append(torch.softmax(logits.float() / self.checkpoint.temperature, dim=1))
            if not out:
                return np.zeros((0, len(self.classes)), dtype=np.float32)
            return torch.cat(out).cpu().numpy()

    def resample(self, samples: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(n_samples,) float32 at sample_rate -> (n_resampled,) tensor at the model's rate."""
        return self._resample(samples, sample_rate)
