"""audio.py: decoding every format and sample type to mono float32, resampling, one-line errors."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import tone

from kwsbatch.errors import AudioError
from kwsbatch.files.audio import decode_audio, is_audio_path, open_audio, read_frames
from kwsbatch.files.resample import Resampler

INT16 = np.array([0, 1, -1, 32767, -32768, 16384, -8192], dtype=np.int16)
INT16_AS_FLOAT = [0.0, 1 / 32768, -1 / 32768, 32767 / 32768, -1.0, 0.5, -0.25]
# 24-bit samples k travel in the top 24 bits of an int32; they decode to k / 2**23.
INT24 = np.array([0, 1, -1, 2**23 - 1, -(2**23), 2**22, 12345], dtype=np.int64)
INT24_AS_FLOAT = [0.0, 2.0**-23, -(2.0**-23), (2**23 - 1) / 2**23, -1.0, 0.5, 12345 / 2**23]


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "name, fmt, subtype",
    [("int16.wav", "WAV", "PCM_16"), ("int16.flac", "FLAC", "PCM_16")],
)
def test_int16_decodes_to_exact_floats(tmp_path, name, fmt, subtype):
    path = tmp_path / name
    sf.write(path, INT16, 16000, format=fmt, subtype=subtype)
    clip = decode_audio(path)
    assert clip.samples.dtype == np.float32
    np.testing.assert_array_equal(clip.samples, np.array(INT16_AS_FLOAT, dtype=np.float32))
    assert (clip.sample_rate, clip.channels) == (16000, 1)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_int16_files_decode_to_the_floats_libsndfile_makes_of_them(tmp_path, fmt, channels):
    # 16-bit files are read as integers and scaled by us: the result must be the very floats
    # that reading them as float32 and mixing the channels gives.
    samples = np.random.default_rng(channels).integers(-32768, 32768, size=(5000, channels), dtype=np.int16)
    path = tmp_path / f"noise.{fmt.lower()}"
    sf.write(path, samples, 16000, format=fmt, subtype="PCM_16")
    as_float, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = as_float[:, 0].copy()
    for channel in range(1, channels):
        expected += as_float[:, channel]
    expected /= np.float32(channels)
    np.testing.assert_array_equal(decode_audio(path).samples, expected)


@pytest.mark.parametrize(
    "name, fmt",
    [("int24.wav", "WAV"), ("int24.flac", "FLAC")],
)
def test_int24_decodes_to_exact_floats(tmp_path, name, fmt):
    path = tmp_path / name
    sf.write(path, (INT24 << 8).astype(np.int32), 16000, format=fmt, subtype="PCM_24")
    assert sf.info(path).subtype == "PCM_24"
    clip = decode_audio(path)
    np.testing.assert_array_equal(clip.samples, np.array(INT24_AS_FLOAT, dtype=np.float32))


def test_float32_wav_round_trips_exactly_without_clipping(tmp_path):
    values = np.array([0.0, 0.1, -0.7, 1.5, -2.25, 1e-7], dtype=np.float32)
    sf.write(tmp_path / "f.wav", values, 22050, subtype="FLOAT")
    clip = decode_audio(tmp_path / "f.wav")
    np.testing.assert_array_equal(clip.samples, values)
    assert clip.sample_rate == 22050


def test_ogg_vorbis_decodes_with_its_rate_length_and_pitch(tmp_path):
    sf.write(tmp_path / "a.ogg", tone(440, 1.0, rate=44100), 44100, format="OGG", subtype="VORBIS")
    clip = decode_audio(tmp_path / "a.ogg")
    assert (clip.sample_rate, clip.channels, len(clip.samples)) == (44100, 1, 44100)
    assert clip.duration_s == 1.0
    assert abs(peak_hz(clip.samples, 44100) - 440) <= 1


def test_stereo_is_mixed_to_the_mean_of_its_channels(tmp_path):
    left = [0.5, 0.25, -1.0, 0.0]
    right = [-0.5, 0.75, -0.5, 0.125]
    sf.write(tmp_path / "s.wav", np.array([left, right], dtype=np.float32).T, 16000, subtype="FLOAT")
    clip = decode_audio(tmp_path / "s.wav")
    np.testing.assert_array_equal(clip.samples, np.array([0.0, 0.5, -0.75, 0.0625], dtype=np.float32))
    assert clip.channels == 2


def test_int16_stereo_in_opposite_phase_mixes_to_silence(tmp_path):
    wave = (tone(300, 0.5) * 32767).astype(np.int16)
    sf.write(tmp_path / "s.wav", np.stack([wave, -wave], axis=1), 16000, subtype="PCM_16")
    clip = decode_audio(tmp_path / "s.wav")
    assert clip.channels == 2 and len(clip.samples) == 8000
    np.testing.assert_array_equal(clip.samples, np.zeros(8000, dtype=np.float32))


def test_multichannel_flac_is_mixed_to_mono(tmp_path):
    # Four channels of constant int16 levels 0.5, 0.25, -0.25, 1 - 2**-15: their mean is pinned.
    levels = np.array([16384, 8192, -8192, 32767], dtype=np.int16)
    sf.write(tmp_path / "quad.flac", np.tile(levels, (100, 1)), 48000, subtype="PCM_16")
    clip = decode_audio(tmp_path / "quad.flac")
    assert (clip.channels, clip.sample_rate) == (4, 48000)
    np.testing.assert_allclose(clip.samples, np.full(100, (0.5 + 0.25 - 0.25 + 32767 / 32768) / 4), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "rate, n, expected",
    [(44100, 44100, 16000), (44100, 44101, 16001), (44100, 100, 37), (8000, 8000, 16000), (8000, 6001, 12002), (16000, 999, 999)],
)
def test_resampled_length_is_the_ceiling_of_n_times_the_rate_ratio(rate, n, expected):
    out = Resampler(16000)(np.zeros(n, dtype=np.float32), rate)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (expected,)


def decoded_at(path, rate: int) -> np.ndarray:
    """A file decoded to mono and resampled to rate, as the pipeline reads it."""
    clip = decode_audio(path)
    return Resampler(rate)(clip.samples, clip.sample_rate).numpy()


@pytest.mark.parametrize("rate, freq", [(44100, 1000.0), (8000, 3000.0), (22050, 440.0)])
def test_resampling_keeps_a_tones_frequency_and_level(tmp_path, rate, freq):
    sf.write(tmp_path / "t.wav", tone(freq, 1.0, rate=rate), rate, subtype="PCM_16")
    out = decoded_at(tmp_path / "t.wav", 16000)
    assert len(out) == 16000
    assert peak_hz(out, 16000) == freq  # 1 Hz bins: the peak is exactly on the tone
    inner = out[800:-800]  # away from the filter's edge transients
    assert np.sqrt(np.mean(inner**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)


def test_downsampling_removes_content_above_the_new_nyquist():
    high = tone(11000, 1.0, rate=44100)  # above 8 kHz: must not alias into the 16 kHz signal
    out = Resampler(16000)(high, 44100).numpy()
    assert np.sqrt(np.mean(out[800:-800] ** 2)) < 0.01 * np.sqrt(np.mean(high**2))


@pytest.mark.parametrize("rate", [44100, 22050, 48000, 8000, 11025, 32000])
@pytest.mark.parametrize("n", [1, 37, 441, 4096, 44117])
def test_resampler_computes_what_torchaudio_resample_does(rate, n):
    samples = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    expected = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000)
    out = Resampler(16000)(samples, rate)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)  # float32 sums of up to 900 taps


def test_resampling_a_long_file_in_pieces_matches_one_piece():
    # 48 kHz -> 16 kHz goes through the product a few thousand output blocks at a time.
    samples = np.random.default_rng(1).standard_normal(48000 * 3 + 5).astype(np.float32)
    expected = torchaudio.functional.resample(torch.from_numpy(samples), 48000, 16000)
    torch.testing.assert_close(Resampler(16000)(samples, 48000), expected, rtol=0, atol=1e-4)


def test_resampler_at_the_target_rate_returns_the_samples_unchanged():
    samples = np.random.default_rng(0).standard_normal(1234).astype(np.float32)
    np.testing.assert_array_equal(Resampler(16000)(samples, 16000).numpy(), samples)


def test_a_44k_stereo_file_is_mixed_and_resampled(tmp_path):
    left, right = tone(500, 0.5, rate=44100), tone(500, 0.5, rate=44100, amplitude=0.1)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 44100, subtype="PCM_24")
    out = decoded_at(tmp_path / "s.wav", 16000)
    assert out.shape == (8000,)
    assert peak_hz(out, 16000) == pytest.approx(500, abs=2)
    assert np.abs(out[400:-400]).max() == pytest.approx(0.2, abs=0.005)  # mean of 0.3 and 0.1 peaks


def test_max_seconds_is_inclusive(tmp_path):
    sf.write(tmp_path / "two.wav", np.zeros(16000 * 2, dtype=np.int16), 16000)
    sf.write(tmp_path / "over.wav", np.zeros(16000 * 2 + 1, dtype=np.int16), 16000)
    assert decode_audio(tmp_path / "two.wav", max_seconds=2).duration_s == 2.0
    with pytest.raises(AudioError):
        decode_audio(tmp_path / "over.wav", max_seconds=2)
    assert len(decode_audio(tmp_path / "over.wav", max_seconds=None).samples) == 32001


def _zero_bytes(path):
    path.write_bytes(b"")


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(1).bytes(4096))


def _text(path):
    path.write_text("path,label\nyes.wav,yes\n" * 20)


def _nan_float(path):
    sf.write(path, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")


def _inf_float(path):
    sf.write(path, np.array([0.1, np.inf, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")


def _no_frames(path):
    sf.write(path, np.zeros(0, dtype=np.int16), 16000)


def _too_long(path):
    sf.write(path, np.zeros(int(16000 * 2.5), dtype=np.int16), 16000)


@pytest.mark.parametrize(
    "write, reason",
    [
        (_zero_bytes, "empty file (0 bytes)"),
        (_random_bytes, "cannot decode audio ("),
        (_text, "cannot decode audio ("),
        (None, "file not found"),
        (_nan_float, "contains NaN or infinite samples"),
        (_inf_float, "contains NaN or infinite samples"),
        (_no_frames, "contains no samples"),
        (_too_long, "2.5 s is longer than the 2 s limit for a clip"),
    ],
    ids=["zero-byte", "random-bytes", "text", "missing", "nan", "inf", "no-frames", "too-long"],
)
def test_unreadable_files_raise_one_line_naming_the_file(tmp_path, write, reason):
    path = tmp_path / "clip.wav"
    if write is not None:
        write(path)
    with pytest.raises(AudioError) as raised:
        decode_audio(path, max_seconds=2)
    message = str(raised.value)
    assert message.startswith(f"{path}: {reason}")
    assert "\n" not in message


def test_a_folder_is_not_audio(tmp_path):
    with pytest.raises(AudioError) as raised:
        decode_audio(tmp_path)
    assert str(raised.value) == f"{tmp_path}: is a folder, not an audio file"


def test_folder_scans_pick_audio_extensions_in_any_case():
    assert [is_audio_path(p) for p in ("a.wav", "b.FLAC", "c.Ogg", "d.mp3", "e.csv", "f.txt", "wav")] == [
        True, True, True, True, False, False, False,
    ]


@pytest.mark.parametrize("name, fmt", [("long.wav", "WAV"), ("long.flac", "FLAC")])
def test_offset_and_duration_read_exactly_that_segment(tmp_path, name, fmt):
    samples = (np.arange(48000) % 20000 - 10000).astype(np.int16)  # every sample says where it is
    sf.write(tmp_path / name, np.stack([samples, samples], axis=1), 16000, format=fmt, subtype="PCM_16")
    whole = decode_audio(tmp_path / name).samples
    segment = decode_audio(tmp_path / name, offset=1.25, duration=0.5)
    np.testing.assert_array_equal(segment.samples, whole[20000:28000])
    assert (segment.duration_s, segment.channels, segment.sample_rate) == (0.5, 2, 16000)
    np.testing.assert_array_equal(decode_audio(tmp_path / name, offset=2.5).samples, whole[40000:])
    np.testing.assert_array_equal(decode_audio(tmp_path / name, offset=2.75, duration=1.0).samples, whole[44000:])


def test_segments_meet_the_clip_limit_by_their_own_length(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 40, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="40.0 s is longer than the 30 s limit"):
        decode_audio(tmp_path / "long.wav")
    assert decode_audio(tmp_path / "long.wav", offset=12.0, duration=1.0).duration_s == 1.0
    with pytest.raises(AudioError, match="28.0 s is longer than the 10 s limit"):
        decode_audio(tmp_path / "long.wav", offset=12.0, max_seconds=10)
    with pytest.raises(AudioError) as error:
        decode_audio(tmp_path / "long.wav", offset=40.0)
    assert str(error.value) == f"{tmp_path / 'long.wav'}: offset 40 s is past the end of the file (40.000 s)"


def test_a_file_deleted_or_replaced_while_open_is_read_to_its_end(tmp_path):
    # The open descriptor keeps the data: a file that disappears mid-read is still read whole.
    path = tmp_path / "going.wav"
    sf.write(path, tone(440, 0.5), 16000)
    with open_audio(path) as audio:
        path.unlink()
        path.write_bytes(b"something else entirely")
        samples = read_frames(audio.sound, audio.sound.frames, path)
    np.testing.assert_allclose(samples, tone(440, 0.5), atol=1 / 32768)


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")  # opening it for reading would block until a writer came
    with pytest.raises(AudioError, match=r"pipe.wav: is a FIFO \(named pipe\), not an audio file$"):
        decode_audio(tmp_path / "pipe.wav")
