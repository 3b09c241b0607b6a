"""The talker's voice: pitch shift at the same duration, and vocal tract length perturbation.

Both work on one batched STFT (512-point Hann frames, hop 128) and resynthesise at each clip's
own length, so durations never change:

- ``PitchShift`` scales every frequency by 2 ** (semitones / 12): a phase vocoder stretches the
  clip by the factor at the same pitch, then linear interpolation plays it back that much faster.
  Both take a factor per clip in one batched pass, where torchaudio's pitch_shift takes one
  factor per call and builds a resampling kernel for each.
- ``VocalTractWarp`` (VTLP, Jaitly & Hinton 2013) warps the spectral envelope by alpha with their
  piecewise-linear map (f -> alpha f up to a boundary, then straight to Nyquist) and keeps the
  harmonics where they are: the envelope is the cepstrally smoothed log spectrum, and each bin
  is scaled by warped envelope / envelope. Their warp acted on the filterbank, moving harmonics
  too; here pitch is PitchShift's job, so the two perturb a longer vocal tract and a lower voice
  independently. It runs on the waveform, not on the mel filterbank, so that it comes before the
  room and the microphone as a talker's vocal tract does, and the model's front end stays as it is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kwsbatch.train.augment.base import WaveTransform, check_range, on_device, on_rows, uniform, valid

N_FFT, HOP = 512, 128
WARP_BOUNDARY_HZ = 4800.0  # Jaitly & Hinton's F_hi: the warp is a pure scaling below it
LIFTER = 30  # cepstral coefficients kept for the envelope: under 2 ms, shorter than a 500 Hz voice's period


def _stft(batch: torch.Tensor) -> torch.Tensor:
    """(batch, samples) -> (batch, N_FFT // 2 + 1, frames) complex."""
    window = torch.hann_window(N_FFT, device=batch.device, dtype=batch.dtype)
    return torch.stft(batch, N_FFT, HOP, window=window, center=True, return_complex=True)


def _istft(spectrum: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, bins, frames) complex -> (batch, width), as torch.istft (center=True) makes it."""
    window = torch.hann_window(N_FFT, device=spectrum.device, dtype=spectrum.real.dtype)
    if spectrum.device.type == "cpu":
        return torch.istft(spectrum, N_FFT, HOP, window=window, center=True, length=width)
    return _overlap_add(spectrum, window, width)


def _overlap_add(spectrum: torch.Tensor, window: torch.Tensor, width: int) -> torch.Tensor:
    """torch.istft's weighted overlap-add, written out for devices: the same sums, within float rounding.

    torch.istft also checks that the windows overlap (NOLA) by reading a value back from the
    device, which on a GPU makes the host wait for every batch. A Hann window at a quarter hop
    always overlaps, so that check is left out.
    """
    frames = (torch.fft.irfft(spectrum.transpose(1, 2), n=N_FFT) * window).transpose(1, 2)
    n_frames = frames.shape[2]
    total = N_FFT + HOP * (n_frames - 1)

    def overlap(columns: torch.Tensor) -> torch.Tensor:
        return nn.functional.fold(columns, output_size=(1, total), kernel_size=(1, N_FFT), stride=(1, HOP)).flatten(1)

    start = N_FFT // 2  # center=True: the first frame was centred on sample 0
    signal = overlap(frames)[:, start : start + width]
    envelope = overlap(window.square()[None, :, None].expand(1, N_FFT, n_frames))[:, start : start + width]
    return nn.functional.pad(signal / envelope, (0, width - signal.shape[1]))


def _interpolate(values: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """values (batch, bins, frames) read at fractional bins position (batch, bins); 0 past the last bin."""
    bins = values.shape[1]
    left = position.floor().long().clamp(0, bins - 1)
    right = (left + 1).clamp(max=bins - 1)
    frac = (position - left).clamp(0, 1)[:, :, None].to(values.dtype)
    out = values.gather(1, left[:, :, None].expand_as(values)) * (1 - frac) + values.gather(1, right[:, :, None].expand_as(values)) * frac
    return out * (position <= bins - 1)[:, :, None]


class PitchShift(WaveTransform):
    """Shift a clip's pitch (and formants) by semitones drawn uniformly, keeping its duration."""

    def __init__(self, p: float = 0.5, min_semitones: float = -3.0, max_semitones: float = 3.0):
        super().__init__(p)
        check_range("PitchShift", min_semitones, max_semitones, -12.0, 12.0, "semitones")
        self.min_semitones, self.max_semitones = min_semitones, max_semitones

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        semitones = uniform(n, self.min_semitones, self.max_semitones, generator)
        return {"factor": torch.where(applied, 2.0 ** (semitones / 12), 1.0)}

    def apply(self, batch, lengths, *, factor):
        """factor (batch,): every frequency f moves to factor * f."""
        chosen = factor != 1
        if not chosen.any():
            return batch, lengths
        # The stretched width from the host's factors: reading it from the device's would wait for the device.
        stretched_width = math.ceil(batch.shape[1] * float(factor[chosen].max()))
        factor = on_device(factor[chosen], batch).to(batch.dtype)
        out = on_rows(batch, chosen, lambda rows: _shift_pitch(rows, factor, stretched_width))
        return out * valid(batch.shape[1], lengths, batch), lengths


def _shift_pitch(batch: torch.Tensor, factor: torch.Tensor, stretched_width: int) -> torch.Tensor:
    """Each row's pitch times its factor; stretched_width is at least the row's width times the largest factor."""
    width = batch.shape[1]
    stretched = _stretch(batch, factor, stretched_width)
    # Play the stretched clip factor times faster: output sample t reads stretched sample t * factor.
    position = torch.arange(width, device=batch.device, dtype=batch.dtype) * factor[:, None]
    left = position.floor().long().clamp(max=stretched.shape[1] - 2)
    frac = position - left
    return stretched.gather(1, left) * (1 - frac) + stretched.gather(1, left + 1) * frac


def _stretch(batch: torch.Tensor, factor: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, samples) made factor (batch,) times longer at the same pitch, by a phase vocoder, (batch, width).

    Output frame k reads input frame k / factor: magnitudes interpolated between frames, phases
    advanced by each bin's instantaneous frequency (torchaudio's phase_vocoder, one rate per clip).
    Frames are (batch, frames, bins) here, bins contiguous, for the gathers over bins.
    """
    spectrum = _stft(batch).transpose(1, 2).contiguous()
    magnitude, phase = spectrum.abs(), spectrum.angle()
    frames, bins = spectrum.shape[1], spectrum.shape[2]
    expected = 2 * math.pi * HOP * torch.arange(bins, device=batch.device, dtype=batch.dtype) / N_FFT
    position = torch.arange(width // HOP + 1, device=batch.device, dtype=batch.dtype) / factor[:, None]  # (batch, out frames)
    left = position.floor().long().clamp(max=frames - 1)
    right = (left + 1).clamp(max=frames - 1)
    frac = (position - left)[:, :, None]
    left, right = left[:, :, None].expand(-1, -1, bins), right[:, :, None].expand(-1, -1, bins)
    first_phase = phase.gather(1, left)
    out_magnitude = magnitude.gather(1, left) * (1 - frac) + magnitude.gather(1, right) * frac
    deviation = phase.gather(1, right) - first_phase - expected
    advance = expected + torch.remainder(deviation + math.pi, 2 * math.pi) - math.pi
    out_phase = phase[:, :1] + torch.cat([torch.zeros_like(advance[:, :1]), advance[:, :-1].cumsum(1)], dim=1)
    # Identity phase locking (Laroche & Dolson 1999): each bin keeps its phase relative to its
    # lobe's peak, so a partial's window lobe stays coherent where free-running bins drift apart.
    peak = _lobe_peak(out_magnitude)
    locked = out_phase.gather(2, peak) + first_phase - first_phase.gather(2, peak)
    return _istft(torch.polar(out_magnitude, locked).transpose(1, 2), width)


def _lobe_peak(magnitude: torch.Tensor) -> torch.Tensor:
    """(batch, frames, bins) -> each bin's strongest neighbour within +-2 bins: a Hann window's main lobe."""
    batch, frames, bins = magnitude.shape
    _, peak = torch.nn.functional.max_pool1d(magnitude.reshape(batch * frames, 1, bins), 5, stride=1, padding=2, return_indices=True)
    return peak.reshape(batch, frames, bins)


class VocalTractWarp(WaveTransform):
    """Move a clip's formants by a factor alpha drawn uniformly (VTLP), harmonics and duration kept."""

    def __init__(self, p: float = 0.5, min_alpha: float = 0.9, max_alpha: float = 1.1, *, sample_rate: int = 16000):
        super().__init__(p)
        check_range("VocalTractWarp", min_alpha, max_alpha, 0.7, 1.4, "alpha")
        self.min_alpha, self.max_alpha, self.sample_rate = min_alpha, max_alpha, sample_rate

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        return {"alpha": torch.where(applied, uniform(n, self.min_alpha, self.max_alpha, generator), 1.0)}

    def source_frequencies(self, freqs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The inverse of Jaitly & Hinton's warp: where (batch, bins) the envelope at output freqs comes from."""
        nyquist = self.sample_rate / 2
        alpha = alpha[:, None]
        boundary_out = WARP_BOUNDARY_HZ * alpha.clamp(max=1.0)  # f_hi * min(alpha, 1), the scaled part's top
        boundary_in = boundary_out / alpha
        upper = nyquist - (nyquist - boundary_in) / (nyquist - boundary_out) * (nyquist - freqs)
        return torch.where(freqs <= boundary_out, freqs / alpha, upper)

    def apply(self, batch, lengths, *, alpha):
        chosen = alpha != 1
        alpha = on_device(alpha[chosen], batch).to(batch.dtype)
        out = on_rows(batch, chosen, lambda rows: self._warp(rows, alpha))
        return out * valid(batch.shape[1], lengths, batch), lengths

    def _warp(self, batch: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        width = batch.shape[1]
        spectrum = _stft(batch)
        bins = spectrum.shape[1]
        log_magnitude = spectrum.abs().clamp(min=1e-7).log()
        cepstrum = torch.fft.irfft(log_magnitude, n=N_FFT, dim=1)
        lifter = torch.zeros(N_FFT, device=batch.device, dtype=batch.dtype)
        lifter[:LIFTER] = 1
        lifter[N_FFT - LIFTER + 1 :] = 1  # the cepstrum of a real spectrum is symmetric
        envelope = torch.fft.rfft(cepstrum * lifter[None, :, None], dim=1).real  # log envelope (batch, bins, frames)
        freqs = torch.fft.rfftfreq(N_FFT, 1 / self.sample_rate, device=batch.device).to(batch.dtype)
        source = self.source_frequencies(freqs, alpha) * (N_FFT / self.sample_rate)
        warped = _interpolate(envelope, source.clamp(max=bins - 1))
        return _istft(spectrum * (warped - envelope).exp(), width)
