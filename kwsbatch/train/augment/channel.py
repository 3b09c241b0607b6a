"""Microphone and channel colouring: a random EQ, band limits, a telephone band.

Each transform multiplies a clip's spectrum by a real gain curve (a zero-phase filter) in one
batched FFT, zero-padded by RING samples so the filter's ringing (both ways: zero phase) wraps
onto the padding, not the clip; lengths stay as they are. The curves are magnitudes, so a
measured response on white noise or a sine is the drawn curve itself: `response` below.
"""

from __future__ import annotations

import math

import torch

from kwsbatch.train.augment.base import WaveTransform, check_range, log_uniform, on_device, on_rows, uniform, valid

RING = 4096  # samples of padding for a filter's impulse response: the steepest, 300 Hz 8th order, rings ~50 ms
TELEPHONE_BAND = (300.0, 3400.0)  # ITU-T G.712's voice channel
TELEPHONE_RATE = 8000  # what a narrowband call keeps: nothing at or above 4 kHz survives


class _SpectralFilter(WaveTransform):
    """A gain curve per clip: response(freqs (bins,), **params) -> (batch, bins) linear gains.

    changes(**params) -> (batch,) says which clips get a curve other than 1; only theirs are
    computed (a curve over 16k bins costs more than the clip's FFT).
    """

    def __init__(self, p: float, sample_rate: int):
        super().__init__(p)
        self.sample_rate = sample_rate

    def apply(self, batch, lengths, **params):
        width = batch.shape[1]
        chosen = self.changes(**params)
        if not chosen.any():
            return batch, lengths
        n_fft = 1 << (width + RING - 1).bit_length()
        freqs = torch.fft.rfftfreq(n_fft, 1 / self.sample_rate, device=batch.device)
        gain = self.response(freqs, **{name: on_device(value[chosen], batch) for name, value in params.items()}).to(batch.dtype)
        out = on_rows(batch, chosen, lambda rows: torch.fft.irfft(torch.fft.rfft(rows, n_fft) * gain, n_fft)[:, :width])
        return out * valid(width, lengths, batch), lengths


def butterworth(freqs: torch.Tensor, cutoff: torch.Tensor, order: int, *, highpass: bool) -> torch.Tensor:
    """|H(f)| of a Butterworth filter, (batch, bins) for (batch,) cutoffs; cutoff 0 (high) or inf (low) passes all."""
    ratio = cutoff[:, None] / freqs.clamp(min=1e-3) if highpass else freqs / cutoff[:, None]
    return (1 + ratio.pow(2 * order)).rsqrt()


class Equalizer(_SpectralFilter):
    """A smooth random EQ: gains drawn in +-max_gain_db at n_bands log-spaced frequencies, 100 Hz to Nyquist.

    The curve is linear in dB between the bands' frequencies (over log frequency) and flat beyond
    them, like a graphic equaliser with gently overlapping bands: a microphone's or a room's tilt.
    """

    def __init__(self, p: float = 0.5, max_gain_db: float = 6.0, *, n_bands: int = 8, sample_rate: int = 16000):
        super().__init__(p, sample_rate)
        check_range("Equalizer", 0.0, max_gain_db, 0.0, 24.0, "gain_db")
        if n_bands < 2:
            raise ValueError(f"Equalizer: n_bands must be >= 2, got {n_bands}")
        self.max_gain_db, self.n_bands = max_gain_db, n_bands

    def band_frequencies(self) -> torch.Tensor:
        return torch.logspace(math.log10(100.0), math.log10(self.sample_rate / 2), self.n_bands)

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        gains_db = uniform(n * self.n_bands, -self.max_gain_db, self.max_gain_db, generator).view(n, self.n_bands)
        return {"gains_db": gains_db * applied[:, None]}

    def changes(self, *, gains_db):
        return (gains_db != 0).any(1)

    def response(self, freqs, *, gains_db):
        """(batch, bins) linear gains for (batch, n_bands) gains in dB."""
        log_bands = on_device(self.band_frequencies(), freqs).log()
        position = (freqs.clamp(min=1e-3).log() - log_bands[0]) / (log_bands[1] - log_bands[0])
        position = position.clamp(0, self.n_bands - 1)
        left = position.floor().long().clamp(max=self.n_bands - 2)
        frac = position - left
        db = gains_db[:, left] * (1 - frac) + gains_db[:, left + 1] * frac
        return torch.exp(db * (math.log(10) / 20))


class BandLimit(_SpectralFilter):
    """A microphone's or a line's band edges: a 4th-order Butterworth high-pass and low-pass, cutoffs drawn log-uniformly."""

    ORDER = 4  # 24 dB per octave

    def __init__(
        self,
        p: float = 0.5,
        min_highpass: float = 50.0,
        max_highpass: float = 400.0,
        min_lowpass: float = 3000.0,
        max_lowpass: float = 8000.0,
        *,
        sample_rate: int = 16000,
    ):
        super().__init__(p, sample_rate)
        check_range("BandLimit", min_highpass, max_highpass, 10.0, 2000.0, "highpass")
        check_range("BandLimit", min_lowpass, max_lowpass, 1000.0, 24000.0, "lowpass")
        self.min_highpass, self.max_highpass, self.min_lowpass, self.max_lowpass = min_highpass, max_highpass, min_lowpass, max_lowpass

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        highpass = log_uniform(n, self.min_highpass, self.max_highpass, generator)
        lowpass = log_uniform(n, self.min_lowpass, self.max_lowpass, generator)
        return {"highpass": torch.where(applied, highpass, 0.0), "lowpass": torch.where(applied, lowpass, math.inf)}

    def changes(self, *, highpass, lowpass):
        return (highpass > 0) | (lowpass < math.inf)

    def response(self, freqs, *, highpass, lowpass):
        return butterworth(freqs, highpass, self.ORDER, highpass=True) * butterworth(freqs, lowpass, self.ORDER, highpass=False)


class Telephone(_SpectralFilter):
    """A narrowband call: the 300-3400 Hz voice band (8th-order skirts), nothing at or above 4 kHz.

    The 4 kHz cut is what a round trip through an 8 kHz telephone line leaves (an ideal resampler's
    anti-alias filter), done here in the same FFT as the band instead of two resamplings.
    """

    ORDER = 8

    def __init__(self, p: float = 0.2, *, sample_rate: int = 16000):
        super().__init__(p, sample_rate)

    def randomize_parameters(self, lengths, generator):
        return {"applied": self._applied(len(lengths), generator)}

    def changes(self, *, applied):
        return applied

    def response(self, freqs, *, applied):
        low, high = (torch.full(applied.shape, f, device=freqs.device) for f in TELEPHONE_BAND)
        band = butterworth(freqs, low, self.ORDER, highpass=True) * butterworth(freqs, high, self.ORDER, highpass=False)
        band = band * (freqs < TELEPHONE_RATE / 2)
        return torch.where(applied[:, None], band, 1.0)
