"""A checkpoint's model on a device: 1-D waveforms in, class probabilities out.

Everything that turns those probabilities into output rows is the label stage's (label/rows.py);
this class knows nothing of files, manifests or columns.
"""

from __future__ import annotations

import numpy as np
import torch

from kwsbatch.files.audio import Resampler
from kwsbatch.model.checkpoint import Checkpoint, checkpoint_id
from kwsbatch.model.device import full_float32, resolve_device
from kwsbatch.model.features import pad_waveforms


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
