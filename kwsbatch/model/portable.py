"""Export-friendly twins of the spotter: padded tensors in, probabilities out, no packing, no FFT.

The training and labelling model (model.py) relies on two things other runtimes lack:
``pack_padded_sequence``, which ONNX cannot express, and torchaudio's MFCC, whose complex STFT
not every runtime implements. The modules here compute the same function from plain tensor
operations, with the checkpoint's own weights and buffers:

- the STFT is a strided conv1d whose kernel is the windowed DFT basis (cos and -sin rows), so
  framing, windowing and the transform are one Conv; power, mel filterbank, log and DCT follow as
  matmuls with torchaudio's own matrices;
- the LSTM runs over the padded batch. A forward direction never looks ahead, so its outputs at a
  clip's valid steps are those of the packed run; the backward direction reads each clip reversed
  *within its own length* (a gather whose index is its own inverse), so it starts at the clip's
  last real frame just as the packed run does, and the same gather puts its outputs back in order.

tests/test_portable.py holds these equal to KeywordSpotter (within 1e-5) for every pooling and
direction, on batches of clips of different lengths.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kwsbatch.model.checkpoint import Checkpoint
from kwsbatch.model.features import LOG_OFFSET, MfccFrontend, normalize_clips
from kwsbatch.model.spotter import KeywordLSTM, gather_steps, last_states, pool_steps, reversal_index


def dft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), 1, n_fft) conv kernel: windowed cos rows, then windowed -sin rows.

    The phase index k * n is reduced modulo n_fft in integers first, so every angle is exact
    before the one rounding to float64.
    """
    k = torch.arange(n_fft // 2 + 1, dtype=torch.int64)[:, None]
    n = torch.arange(n_fft, dtype=torch.int64)[None, :]
    angle = (k * n % n_fft).double() * (2 * math.pi / n_fft)
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window.double()
    return basis.float()[:, None, :]


class DftMfcc(nn.Module):
    """(batch, samples) waveforms + (batch,) lengths -> normalised (batch, frames, n_mfcc) + frame lengths.

    Computes what MfccFrontend computes (uncentred STFT, power spectrum, mel filterbank,
    log with a fixed offset, DCT, training-set normalisation), from its buffers.
    """

    def __init__(self, frontend: MfccFrontend):
        super().__init__()
        config = frontend.config
        mel = frontend.mfcc.MelSpectrogram
        if mel.spectrogram.win_length != config.n_fft:
            raise ValueError("the DFT kernel assumes the window spans the whole FFT")
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.n_freqs = config.n_fft // 2 + 1
        self.register_buffer("dft", dft_basis(config.n_fft, mel.spectrogram.window.detach().cpu()))
        self.register_buffer("mel_fb", mel.mel_scale.fb.detach().cpu().clone())  # (n_freqs, n_mels)
        self.register_buffer("dct", frontend.mfcc.dct_mat.detach().cpu().clone())  # (n_mels, n_mfcc)
        self.register_buffer("mean", frontend.mean.detach().cpu().clone())
        self.register_buffer("std", frontend.std.detach().cpu().clone())
        self.clip_norm = config.clip_norm

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # n_fft zeros on the right give a batch of clips shorter than one window its one frame (as
        # pad_waveforms does for kwsbatch); the frames this adds elsewhere lie past every clip's end.
        padded = F.pad(waveforms, (0, self.n_fft))
        spectrum = F.conv1d(padded[:, None, :], self.dft, stride=self.hop_length)  # (batch, 2 * n_freqs, frames)
        real, imag = spectrum[:, : self.n_freqs], spectrum[:, self.n_freqs :]
        power = (real * real + imag * imag).transpose(1, 2)  # (batch, frames, n_freqs)
        mfcc = torch.log(power @ self.mel_fb + LOG_OFFSET) @ self.dct  # (batch, frames, n_mfcc)
        lengths = torch.minimum(lengths, torch.full_like(lengths, waveforms.shape[1]))
        frame_lengths = 1 + torch.div(torch.clamp(lengths, min=self.n_fft) - self.n_fft, self.hop_length, rounding_mode="floor")
        if self.clip_norm != "none":
            mfcc = normalize_clips(mfcc, frame_lengths, self.clip_norm == "meanvar")
        return (mfcc - self.mean) / self.std, frame_lengths


class PaddedLSTM(nn.Module):
    """KeywordLSTM's function over a padded batch: (batch, frames, n_features) + (batch,) frame lengths -> logits."""

    def __init__(self, head: KeywordLSTM):
        super().__init__()
        config = head.config
        self.hidden = config.hidden
        self.pooling = config.pooling
        self.bidirectional = config.bidirectional
        suffixes = ("", "_reverse") if config.bidirectional else ("",)
        # One single-layer, one-direction LSTM per layer and direction, with the stacked LSTM's weights.
        self.layers = nn.ModuleList()
        for layer in range(config.layers):
            directions = nn.ModuleList()
            for suffix in suffixes:
                lstm = nn.LSTM(head.lstm.input_size if layer == 0 else config.hidden * len(suffixes), config.hidden, batch_first=True)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(lstm, f"{name}_l0").data.copy_(getattr(head.lstm, f"{name}_l{layer}{suffix}").detach())
                directions.append(lstm)
            self.layers.append(directions)
        self.classifier = nn.Linear(head.classifier.in_features, head.classifier.out_features)
        self.classifier.load_state_dict(head.classifier.state_dict())
        # The causal conv front end is plain conv1d and padding, which every runtime has: reuse it as it is.
        self.conv = head.conv if config.conv_channels else None

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            features, frame_lengths = self.conv(features, frame_lengths)
        reverse = reversal_index(frame_lengths, features.shape[1])
        x = features
        for directions in self.layers:
            outputs, _ = directions[0](x)
            if self.bidirectional:
                backward, _ = directions[1](gather_steps(x, reverse))
                outputs = torch.cat([outputs, gather_steps(backward, reverse)], dim=2)
            x = outputs
        if self.pooling == "last":
            pooled = last_states(x, frame_lengths, self.hidden, self.bidirectional)
        else:
            pooled = pool_steps(self.pooling, x, frame_lengths)
        return self.classifier(pooled)


class PortableSpotter(nn.Module):
    """(batch, samples) float32 mono waveforms at the model's rate + (batch,) int64 lengths -> (batch, n_classes) probabilities.

    Probabilities are softmax(logits / temperature), as `kwsbatch label` reports them.
    """

    def __init__(self, checkpoint: Checkpoint):
        super().__init__()
        spotter = checkpoint.build("cpu")
        self.frontend = DftMfcc(spotter.frontend)
        self.head = PaddedLSTM(spotter.head)
        self.register_buffer("temperature", torch.tensor(float(checkpoint.temperature)))
        self.eval()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features, frame_lengths = self.frontend(waveforms, lengths)
        return torch.softmax(self.head(features, frame_lengths) / self.temperature, dim=1)
