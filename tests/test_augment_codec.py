"""Lossy codec round trips: same length, no delay, a bounded change that grows as the bitrate falls, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from kwsbatch.train.augment import CODECS, CodecRoundTrip, round_trip

SR = 16000
AVAILABLE = [name for name, (container, subtype, _) in CODECS.items() if subtype in sf.available_subtypes(container)]


@pytest.fixture(scope="module")
def chirp() -> np.ndarray:
    """A 0.8 s sweep from 200 Hz to 3 kHz under a Hann envelope: speech's band and dynamics, roughly."""
    t = np.arange(int(0.8 * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (200 * t + 1750 * t**2)) * np.hanning(len(t))).astype(np.float32)


def error_db(out: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(np.sum((out - clean) ** 2) / np.sum(clean**2)))


def lag(out: np.ndarray, clean: np.ndarray) -> int:
    n = 2 * len(clean)
    correlation = np.fft.irfft(np.fft.rfft(out, n) * np.conj(np.fft.rfft(clean, n)), n)
    best = int(np.argmax(correlation))
    return best if best < n // 2 else best - n


@pytest.mark.parametrize("codec", AVAILABLE)
def test_a_round_trip_keeps_length_and_timing_and_changes_the_signal_a_bounded_amount(codec, chirp):
    out = round_trip(chirp, codec, 1.0, SR)
    assert out.shape == chirp.shape and out.dtype == np.float32
    assert lag(out, chirp) == 0  # the codec's delay is compensated
    assert -45 < error_db(out, chirp) < -5, error_db(out, chirp)
    assert np.array_equal(out, round_trip(chirp, codec, 1.0, SR))  # deterministic


@pytest.mark.parametrize("codec", [c for c in ("vorbis", "opus", "mp3") if c in AVAILABLE])
def test_a_higher_compression_level_loses_more(codec, chirp):
    errors = [error_db(round_trip(chirp, codec, level, SR), chirp) for level in (0.0, 1.0)]
    assert errors[0] < errors[1] - 5, errors


def test_gsm_is_coded_narrowband(chirp):
    # Full-rate GSM runs at 8 kHz: a 5 kHz tone does not survive the round trip, a 1 kHz tone does.
    t = np.arange(SR) / SR
    tones = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (1000, 5000)]
    kept, lost = (round_trip(tone, "gsm", 0.0, SR) for tone in tones)
    assert error_db(kept, tones[0]) < -3
    assert np.sum(lost[2000:-2000] ** 2) < 1e-3 * np.sum(tones[1][2000:-2000] ** 2)


def test_the_transform_codes_the_clips_it_picks_up_to_their_length(chirp):
    codec = CodecRoundTrip(1.0, 1.0, 1.0, codecs=("mulaw", "vorbis"), sample_rate=SR)
    batch = torch.from_numpy(chirp).repeat(3, 1)
    batch[1, 6000:] = 0
    lengths = torch.tensor([len(chirp), 6000, len(chirp)])
    out, new_lengths = codec.apply(batch, lengths, codec=torch.tensor([0, 1, -1]), level=torch.tensor([1.0, 1.0, 1.0]))
    assert torch.equal(new_lengths, lengths)
    assert np.array_equal(out[0].numpy(), round_trip(chirp, "mulaw", 1.0, SR))
    assert np.array_equal(out[1, :6000].numpy(), round_trip(chirp[:6000], "vorbis", 1.0, SR))
    assert out[1, 6000:].abs().max() == 0 and torch.equal(out[2], batch[2])


def test_draws_cover_the_codecs_and_the_level_range():
    codec = CodecRoundTrip(0.5, 0.3, 0.6, codecs=("mulaw", "gsm", "mp3"))
    params = codec.randomize_parameters(torch.full((600,), SR), torch.Generator().manual_seed(0))
    assert set(params["codec"].tolist()) == {-1, 0, 1, 2}
    assert 0.4 < (params["codec"] == -1).float().mean() < 0.6
    assert params["level"].min() >= 0.3 and params["level"].max() <= 0.6


@pytest.mark.parametrize("codecs", [(), ("flac",)])
def test_unknown_codecs_are_refused(codecs):
    with pytest.raises(ValueError, match="codecs must be some of mulaw, alaw, gsm, vorbis, opus, mp3"):
        CodecRoundTrip(0.5, codecs=codecs)
