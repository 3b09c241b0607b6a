"""Microphone and channel colouring: measured responses on sines and white noise match the drawn curves."""

from __future__ import annotations

import math

import pytest
import torch

from kwsbatch.train.augment import BandLimit, Equalizer, Telephone

SR = 16000


def sines(freqs: list[float], seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return torch.stack([torch.sin(2 * math.pi * f * t) for f in freqs]).float()


def gain_db(out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Each row's level change in dB over its middle half, away from the edges' ringing."""
    middle = slice(clean.shape[1] // 4, 3 * clean.shape[1] // 4)
    return 10 * torch.log10(out[:, middle].pow(2).mean(1) / clean[:, middle].pow(2).mean(1))


def test_equalizer_gain_at_each_band_is_the_drawn_gain():
    eq = Equalizer(1.0, 9.0, n_bands=6, sample_rate=SR)
    bands = eq.band_frequencies().tolist()
    params = eq.randomize_parameters(torch.full((1,), SR), torch.Generator().manual_seed(4))
    drawn = params["gains_db"][0]
    assert drawn.abs().max() <= 9 and drawn.abs().min() > 0
    clean = sines(bands[:-1])  # the last band is Nyquist itself
    out, lengths = eq.apply(clean, torch.full((len(bands) - 1,), SR), gains_db=drawn.repeat(len(bands) - 1, 1))
    assert lengths.tolist() == [SR] * (len(bands) - 1)
    torch.testing.assert_close(gain_db(out, clean), drawn[:-1], atol=0.05, rtol=0)


def test_equalizer_is_linear_in_db_between_bands_on_white_noise():
    eq = Equalizer(1.0, 6.0, n_bands=4, sample_rate=SR)
    gains = torch.tensor([[6.0, -6.0, 0.0, 3.0]])
    noise = torch.randn(1, 4 * SR, generator=torch.Generator().manual_seed(0))
    out, _ = eq.apply(noise, torch.tensor([4 * SR]), gains_db=gains)
    spectrum_in, spectrum_out = (torch.fft.rfft(x[0]).abs().pow(2) for x in (noise, out))
    freqs = torch.fft.rfftfreq(4 * SR, 1 / SR)
    bands = eq.band_frequencies()
    middle = (bands[0] * bands[1]).sqrt()  # halfway between the first two bands in log frequency: 0 dB
    near = (freqs > middle * 0.97) & (freqs < middle * 1.03)
    measured = 10 * torch.log10(spectrum_out[near].sum() / spectrum_in[near].sum())
    assert measured.item() == pytest.approx(0.0, abs=0.3)
    low = freqs < bands[0] * 0.9  # flat below the first band, at its gain
    assert 10 * torch.log10(spectrum_out[low][10:].sum() / spectrum_in[low][10:].sum()).item() == pytest.approx(6.0, abs=0.3)


def test_band_limit_is_3_db_down_at_its_cutoffs_and_24_db_an_octave_beyond():
    band = BandLimit(1.0, 100, 400, 3000, 6000, sample_rate=SR)
    highpass, lowpass = torch.tensor([200.0] * 5), torch.tensor([4000.0] * 5)
    clean = sines([200, 4000, 1000, 100, 8000 - 1])
    out, _ = band.apply(clean, torch.full((5,), SR), highpass=highpass, lowpass=lowpass)
    measured = gain_db(out, clean)
    assert measured[0].item() == pytest.approx(-3.01, abs=0.05)  # at the high-pass cutoff
    assert measured[1].item() == pytest.approx(-3.01, abs=0.05)  # at the low-pass cutoff
    assert measured[2].item() == pytest.approx(0.0, abs=0.05)  # the passband
    assert measured[3].item() == pytest.approx(-24.1, abs=0.3)  # an octave below: 4th order
    assert measured[4].item() == pytest.approx(-24.1, abs=0.3)  # about an octave above


def test_band_limit_cutoffs_are_drawn_in_their_ranges():
    band = BandLimit(1.0, 50, 400, 3000, 8000, sample_rate=SR)
    params = band.randomize_parameters(torch.full((500,), SR), torch.Generator().manual_seed(0))
    assert params["highpass"].min() >= 50 and params["highpass"].max() <= 400
    assert params["lowpass"].min() >= 3000 and params["lowpass"].max() <= 8000
    # log-uniform: as many cutoffs below the geometric middle as above it
    assert 0.4 < (params["highpass"] < math.sqrt(50 * 400)).float().mean() < 0.6


def test_telephone_keeps_the_voice_band_and_removes_the_rest():
    clean = sines([1000, 300, 3400, 100, 5000, 4200])
    out, _ = Telephone(1.0, sample_rate=SR).apply(clean, torch.full((6,), SR), applied=torch.ones(6, dtype=torch.bool))
    measured = gain_db(out, clean)
    assert measured[0].item() == pytest.approx(0.0, abs=0.05)
    assert measured[1].item() == pytest.approx(-3.01, abs=0.05) and measured[2].item() == pytest.approx(-3.01, abs=0.05)
    assert measured[3].item() < -60  # 8th-order skirt, 1.6 octaves down
    assert measured[4].item() < -60 and measured[5].item() < -60  # nothing an 8 kHz line cannot carry


@pytest.mark.parametrize("transform", [Equalizer(0.0), BandLimit(0.0), Telephone(0.0)], ids=lambda t: type(t).__name__)
def test_clips_left_alone_come_out_bit_identical(transform):
    clean = sines([440, 2000])
    out, _ = transform(clean, torch.full((2,), SR), torch.Generator().manual_seed(0))
    assert torch.equal(out, clean)


@pytest.mark.parametrize("make", [lambda: Equalizer(0.5, -1), lambda: Equalizer(0.5, 6, n_bands=1), lambda: BandLimit(0.5, 400, 50), lambda: BandLimit(0.5, 50, 400, 8000, 3000)])
def test_bad_channel_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()
