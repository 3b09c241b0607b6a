"""MFCC features on padded batches, with frame counts that padding cannot change.

Why frames never see padding: the STFT runs with ``center=False``, so frame ``t`` covers samples
``[t * hop, t * hop + n_fft)`` of the clip itself and a clip of ``n`` samples has exactly
``1 + (n - n_fft) // hop`` frames whose windows end inside it. Later frames of a padded batch overlap
the zero padding and are cut off by the frame lengths. Log-mel energies use a fixed offset
(``log_mels=True``) rather than a decibel floor relative to the loudest value, which torchaudio
would take over the whole batch. Together these make a clip's features independent of its batch.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from kwsbatch.model.config import FeatureConfig
from kwsbatch.model.device import to_device

LOG_OFFSET = 1e-6  # log(mel + 1e-6), torchaudio's MFCC with log_mels=True
_CPU_BLOCK = 16  # clips whose spectrograms are computed together on the CPU: they stay in cache


class MfccFrontend(nn.Module):
    """(batch, samples) waveforms + lengths -> normalised (batch, frames, n_mfcc) features + frame lengths.

    The per-coefficient mean and std come from the training set and travel in the checkpoint.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=config.sample_rate,
            n_mfcc=config.n_mfcc,
            log_mels=True,
            melkwargs=dict(
                n_fft=config.n_fft,
                hop_length=config.hop_length,
                n_mels=config.n_mels,
                f_min=config.f_min,
                f_max=config.f_max,
                center=False,
            ),
        )
        self.register_buffer("mean", torch.zeros(config.n_mfcc))
        self.register_buffer("std", torch.ones(config.n_mfcc))

    def raw(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MFCCs before the training-set normalisation: (batch, frames, n_mfcc) and (batch,) frame lengths (on the CPU)."""
        if waveforms.shape[-1] < self.config.n_fft:
            waveforms = nn.functional.pad(waveforms, (0, self.config.n_fft - waveforms.shape[-1]))
        features = self._mfcc(waveforms)
        frame_lengths = self.config.frame_count(lengths.cpu())
        if self.config.clip_norm != "none":
            features = normalize_clips(features, to_device(frame_lengths, features.device), self.config.clip_norm == "meanvar")
        return features, frame_lengths

    def _mfcc(self, waveforms: torch.Tensor) -> torch.Tensor:
        """torchaudio's MFCC with its own window, filterbank and DCT, as (batch, frames, n_mfcc).

        On the CPU, a few clips at a time: the spectrogram of a batch of 64 one-second clips is
        10 MB, more than a core's cache, and each step after the STFT read it back from memory;
        in blocks of 16 clips the features cost a quarter less (half less in batches of 256).
        Each clip's features are computed on its own row either way.
        """
        if waveforms.device.type != "cpu":
            return self._mfcc_block(waveforms)
        return torch.cat([self._mfcc_block(block) for block in waveforms.split(_CPU_BLOCK)])

    def _mfcc_block(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The MFCC of a batch in one go.

        The power spectrum is re^2 + im^2 here: torchaudio takes the complex magnitude (a square
        root) and squares it again, which made its MFCC twice as slow as this, the same values
        within float rounding.
        """
        mel = self.mfcc.MelSpectrogram
        spectrum = torch.stft(
            waveforms,
            self.config.n_fft,
            hop_length=self.config.hop_length,
            window=mel.spectrogram.window,
            center=False,
            return_complex=True,
        )
        power = (spectrum.real.square() + spectrum.imag.square()).transpose(1, 2)
        return torch.log(power @ mel.mel_scale.fb + LOG_OFFSET) @ self.mfcc.dct_mat

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, frame_lengths = self.raw(waveforms, lengths)
        return (features - self.mean) / self.std, frame_lengths

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=1e-5))


def normalize_clips(features: torch.Tensor, frame_lengths: torch.Tensor, scale: bool) -> torch.Tensor:
    """Each clip's coefficients to zero mean (and unit std) over its own valid frames only.

    The sums are running sums read at each clip's last frame: a running sum adds frame after
    frame, so what follows a clip cannot change it, while a plain sum over the padded batch
    groups its additions by the batch's length and moved features by up to 4e-6.
    """
    last = (frame_lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, features.shape[2])
    n = frame_lengths.to(features.dtype)[:, None, None]
    mean = features.cumsum(1).gather(1, last) / n
    centred = features - mean
    if not scale:
        return centred
    var = centred.pow(2).cumsum(1).gather(1, last) / n
    return centred / (var.sqrt() + 1e-3)


class FeatureStats:
    """Running per-coefficient mean and std over the valid frames of many batches (float64)."""

    def __init__(self, n_features: int):
        self.count = 0
        self.total = torch.zeros(n_features, dtype=torch.float64)
        self.total_sq = torch.zeros(n_features, dtype=torch.float64)

    def update(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> None:
        mask = torch.arange(features.shape[1]) < frame_lengths[:, None]
        valid = features.detach().cpu()[mask].double()
        self.count += valid.shape[0]
        self.total += valid.sum(0)
        self.total_sq += (valid * valid).sum(0)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no frames to compute feature statistics from")
        mean = self.total / self.count
        var = torch.clamp(self.total_sq / self.count - mean * mean, min=0.0)
        return mean.float(), var.sqrt().float()
