"""Pitch shift and vocal tract length perturbation: frequencies move by the drawn factor, durations do not."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.functional as AF

from kwsbatch.train.augment import PitchShift, VocalTractWarp

SR = 16000


def tone(freq: float, seconds: float = 1.0, start: float = 0.0, stop: float | None = None) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    on = (t >= start) & (t < (stop if stop is not None else seconds))
    return (0.5 * torch.sin(2 * math.pi * freq * t) * on).float()


def peak_frequency(wave: torch.Tensor) -> float:
    """The strongest frequency, refined between bins by a parabola through the log spectrum's peak."""
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave)), n=8 * len(wave)).abs().log()
    k = int(spectrum[1:-1].argmax()) + 1
    a, b, c = spectrum[k - 1 : k + 2].tolist()
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / (8 * len(wave))


@pytest.mark.parametrize("semitones", [-3.0, -1.0, 2.0, 4.0])
def test_pitch_shift_moves_a_sine_by_the_drawn_factor_at_the_same_length(semitones):
    shift = PitchShift(1.0, semitones, semitones)
    params = shift.randomize_parameters(torch.tensor([SR, 12000]), torch.Generator().manual_seed(0))
    clips = torch.stack([tone(440), tone(660)])
    clips[1, 12000:] = 0
    out, lengths = shift.apply(clips, torch.tensor([SR, 12000]), **params)
    factor = 2 ** (semitones / 12)
    assert lengths.tolist() == [SR, 12000] and out.shape == clips.shape
    assert peak_frequency(out[0, 2000:-2000]) == pytest.approx(440 * factor, rel=0.002)
    assert peak_frequency(out[1, 2000:10000]) == pytest.approx(660 * factor, rel=0.002)
    assert out[1, 12000:].abs().max() == 0
    # A steady tone keeps its level: the phase vocoder keeps each window lobe coherent.
    assert out[0, 2000:-2000].pow(2).mean().sqrt().item() == pytest.approx(0.5 / math.sqrt(2), rel=0.05)


def test_pitch_shift_keeps_a_sounds_timing():
    burst = tone(500, start=0.3, stop=0.6)[None]
    out, _ = PitchShift(1.0).apply(burst, torch.tensor([SR]), factor=torch.tensor([2 ** (3 / 12)]))
    envelope = out[0].abs().unfold(0, 160, 160).max(1).values  # 10 ms blocks
    loud = (envelope > 0.25).nonzero().flatten()
    assert loud[0].item() in range(29, 32) and loud[-1].item() in range(58, 61)  # still 0.3 s to 0.6 s


def resonance(noise: torch.Tensor, centre: float, pole_radius: float = 0.9) -> torch.Tensor:
    """White noise through a two-pole resonator: one formant-like peak at centre Hz."""
    a = torch.tensor([1.0, -2 * pole_radius * math.cos(2 * math.pi * centre / SR), pole_radius**2])
    out = AF.lfilter(noise, a, torch.tensor([1.0, 0.0, 0.0]), clamp=False)
    return out / out.std()


def formant_frequency(wave: torch.Tensor) -> float:
    """The peak of the long-term spectrum (2048-point frames), smoothed over 300 Hz."""
    power = torch.stft(wave, 2048, 512, window=torch.hann_window(2048), return_complex=True).abs().pow(2).mean(1)
    smooth = torch.nn.functional.avg_pool1d(power[None, None], 39, 1, 19, count_include_pad=False)[0, 0]
    k = int(smooth.argmax())
    a, b, c = smooth[k - 1 : k + 2].log().tolist()
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / 2048


@pytest.mark.parametrize("centre", [1200.0, 2500.0])
def test_vtlp_moves_a_formant_by_alpha(centre):
    noise = torch.randn(1, 4 * SR, generator=torch.Generator().manual_seed(1))
    clip = resonance(noise, centre)
    warp = VocalTractWarp(1.0, 0.9, 1.1, sample_rate=SR)
    peaks = {}
    for alpha in (0.9, 1.0, 1.1):
        out, lengths = warp.apply(clip, torch.tensor([4 * SR]), alpha=torch.tensor([alpha]))
        assert lengths.tolist() == [4 * SR] and out.shape == clip.shape
        peaks[alpha] = formant_frequency(out[0])
    assert peaks[1.0] == pytest.approx(centre, rel=0.05)
    assert peaks[0.9] / peaks[1.0] == pytest.approx(0.9, abs=0.03)
    assert peaks[1.1] / peaks[1.0] == pytest.approx(1.1, abs=0.03)


def centroid(wave: torch.Tensor) -> float:
    """The power-weighted mean frequency below 4 kHz."""
    power = torch.fft.rfft(wave * torch.hann_window(len(wave))).abs().pow(2)
    freqs = torch.fft.rfftfreq(len(wave), 1 / SR)
    band = freqs < 4000
    return float((power[band] * freqs[band]).sum() / power[band].sum())


def test_vtlp_keeps_the_harmonics_where_they_are():
    # A 160 Hz pulse train through a formant: VTLP reweights the harmonics, it does not move them.
    pulses = torch.zeros(1, 2 * SR)
    pulses[0, :: SR // 160] = 1.0  # 160 Hz exactly: 100 samples apart
    voice = resonance(pulses, 1000.0)
    freqs = torch.fft.rfftfreq(2 * SR, 1 / SR)
    on, off = (freqs % 160 == 0) & (freqs > 0) & (freqs < 4000), (freqs % 160 == 80) & (freqs < 4000)
    centroids = {}
    for alpha in (0.9, 1.0, 1.1):
        out, _ = VocalTractWarp(1.0, sample_rate=SR).apply(voice, torch.tensor([2 * SR]), alpha=torch.tensor([alpha]))
        spectrum = torch.fft.rfft(out[0] * torch.hann_window(2 * SR)).abs()
        assert spectrum[on].median() > 30 * spectrum[off].median()  # the energy stays on multiples of 160 Hz
        centroids[alpha] = centroid(out[0])
    # while the spectral balance moves with the formant
    assert centroids[0.9] < 0.95 * centroids[1.0] and centroids[1.1] > 1.05 * centroids[1.0]


def test_vtlp_warp_is_jaitly_and_hintons_piecewise_linear_map():
    warp = VocalTractWarp(1.0, sample_rate=SR)
    freqs = torch.tensor([0.0, 1000.0, 4000.0, 8000.0])
    source = warp.source_frequencies(freqs, torch.tensor([1.1, 0.9]))
    torch.testing.assert_close(source[:, :3], torch.stack([freqs[:3] / 1.1, freqs[:3] / 0.9]))
    torch.testing.assert_close(source[:, 3], torch.tensor([8000.0, 8000.0]))  # Nyquist stays


@pytest.mark.parametrize("make", [lambda: PitchShift(0.5, 3, -3), lambda: PitchShift(0.5, -13, 0), lambda: VocalTractWarp(0.5, 1.2, 1.1), lambda: VocalTractWarp(0.5, 0.5, 1.0)])
def test_bad_voice_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("width", [300, 1000, 16000, 16127])
def test_the_devices_overlap_add_is_torch_istft_without_its_host_check(width):
    # On a GPU the voice transforms resynthesise with their own overlap-add (torch.istft reads a
    # value back from the device to check the window): the same signal, to float rounding.
    from kwsbatch.train.augment import voice

    g = torch.Generator().manual_seed(width)
    clips = torch.randn(3, width, generator=g)
    spectrum = voice._stft(clips)
    spectrum = spectrum * torch.rand(spectrum.shape, generator=g)  # not a spectrum any signal has
    window = torch.hann_window(voice.N_FFT)
    expected = torch.istft(spectrum, voice.N_FFT, voice.HOP, window=window, center=True, length=width)
    assert torch.allclose(voice._overlap_add(spectrum, window, width), expected, atol=1e-6, rtol=0)
    assert torch.allclose(voice._overlap_add(voice._stft(clips), window, width), clips, atol=1e-5, rtol=0)
