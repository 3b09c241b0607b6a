"""Audio decoding and resampling: any file soundfile reads -> mono float32 at the model's rate.

Decoding is numpy and soundfile only; the resampler (torch, imported lazily) runs beside it in the
loader's workers (loader.py).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from kwsbatch.errors import AudioError

# Extensions picked up when a folder is scanned; a file named explicitly is tried whatever its name.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})

# A clip longer than this is refused rather than labelled from its first seconds: keyword
# clips are short, and a long recording needs window mode, not truncation.
DEFAULT_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class DecodedClip:
    """A file's audio mixed to mono, at the file's own sample rate."""

    samples: np.ndarray  # (n_samples,) float32
    sample_rate: int  # the file's own rate, before resampling
    channels: int  # the file's own channel count, before mixing

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def is_audio_path(path: str | os.PathLike) -> bool:
    # os.path, not Path(path).suffix: this runs once per file of a folder scan, and pathlib costs 10x more.
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def decode_audio(
    path: str | os.PathLike,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    offset: float | None = None,
    duration: float | None = None,
) -> DecodedClip:
    """Read a file (or, with offset, its segment of duration seconds) and mix it to mono.

    Raises AudioError with a one-line reason on any failure. A segment is read by seeking, so
    labelling many short segments of a long recording never decodes the whole of it each time.
    """
    with reading_errors(path), sf.SoundFile(path) as f:
        start, frames = _segment_frames(f, path, offset, duration)
        if max_seconds is not None and frames > max_seconds * f.samplerate:
            raise AudioError(
                f"{path}: {frames / f.samplerate:.1f} s is longer than the {max_seconds:g} s limit for a clip "
                "(label long recordings with --window)"
            )
        if start:
            f.seek(start)
        samples = read_mono(f, frames if offset is not None else -1, path)
        sample_rate, channels = f.samplerate, f.channels
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    return DecodedClip(samples, sample_rate, channels)


def read_mono(f: sf.SoundFile, frames: int, path: str | os.PathLike) -> np.ndarray:
    """The next `frames` frames of an open file (-1: all the rest) as mono float32, checked finite.

    16-bit files are read as integers and scaled here by libsndfile's own 1/32768, to the same
    floats: libsndfile converts them a sample at a time, which made reading a WAV twice as slow.
    Integers need no check for NaN either.
    """
    if f.subtype == "PCM_16":
        return mix_to_mono(f.read(frames, dtype="int16", always_2d=True))
    data = f.read(frames, dtype="float32", always_2d=True)
    check_finite(data, path)
    return mix_to_mono(data)


@contextlib.contextmanager
def reading_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn whatever soundfile raises while opening or reading path into a one-line AudioError."""
    try:
        yield
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        # libsndfile reports every system failure (missing, denied, looping link) as "System error.":
        # open the file ourselves to learn which it was.
        if os.path.isdir(path):
            raise AudioError(f"{path}: is a folder, not an audio file") from None
        try:
            with open(path, "rb"):
                pass
        except OSError as os_error:
            raise AudioError(f"{path}: {_system_reason(path, os_error)}") from None
        if os.path.getsize(path) == 0:
            raise AudioError(f"{path}: empty file (0 bytes)") from None
        reason = _first_line(e.error_string)
        if "does not exist or is not a regular file" in reason:
            reason = "unsupported or corrupt format"  # what libsndfile says when no decoder accepts an existing file
        raise AudioError(f"{path}: cannot decode audio ({reason})") from None
    except OSError as e:
        raise AudioError(f"{path}: {_system_reason(path, e)}") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_first_line(str(e))})") from None


def check_finite(data: np.ndarray, path: str | os.PathLike) -> None:
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")


_PCM16_SCALE = np.float32(1 / 32768)  # libsndfile's scaling of 16-bit samples to floats


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) float32, or int16 scaled by 1/32768 -> contiguous (frames,) float32: the mean of the channels.

    Summed a channel at a time rather than with data.mean(axis=1), which walks the two or three
    values of each frame one by one: the same floats (the same additions in the same order), 13x
    faster, and for stereo files that was a sixth of the time spent labelling one. Sums of 16-bit
    integers are exact in float32, so scaling after mixing gives the floats of scaling before.
    """
    if data.shape[1] == 1 and data.dtype == np.float32:
        return np.ascontiguousarray(data[:, 0])
    mono = data[:, 0].astype(np.float32)
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    if data.shape[1] > 1:
        mono /= np.float32(data.shape[1])
    if data.dtype == np.int16:
        mono *= _PCM16_SCALE
    return mono


_RESAMPLE_BLOCKS = 4096


class Resampler:
    """Resamples to one target rate with torchaudio's windowed-sinc kernels, one per source rate.

    torchaudio applies a kernel as a strided convolution, and oneDNN, torch's CPU convolution,
    compiles a kernel for every new input length: nearly every clip has one, so resampling a
    1 s 44.1 kHz clip took 2.3 ms. The same sums as a matrix product over strided views of the
    clip take 0.14 ms and agree with torchaudio to float32 rounding (1e-4 on unit-variance noise).
    """

    def __init__(self, target_rate: int):
        self.target_rate = target_rate
        self._kernels: dict[int, tuple] = {}

    def __call__(self, samples: np.ndarray, sample_rate: int):
        """(n_samples,) float32 at sample_rate -> (n_resampled,) float32 torch tensor at target_rate."""
        import torch

        wave = torch.from_numpy(samples)
        if sample_rate == self.target_rate:
            return wave
        if sample_rate not in self._kernels:
            self._kernels[sample_rate] = self._kernel(sample_rate)
        step, block, width, kernel = self._kernels[sample_rate]
        # Every `step` input samples make `block` output samples: block k is the kernel applied
        # to the input from sample k * step - width on.
        padded = torch.nn.functional.pad(wave[None], (width, width + step))[0]
        frames = padded.unfold(0, kernel.shape[0], step)  # (blocks, taps), a view
        # The product copies its rows of the view; a few thousand at a time keeps that copy small
        # when taps overlap a lot (48 kHz: 41 taps every 3 samples), whatever the file's length.
        with torch.no_grad():
            out = torch.cat([rows @ kernel for rows in frames.split(_RESAMPLE_BLOCKS)]).reshape(-1)
        return out[: -(-len(wave) * block // step)]  # ceil(n * block / step), as torchaudio

    def _kernel(self, sample_rate: int) -> tuple:
        import torchaudio

        transform = torchaudio.transforms.Resample(sample_rate, self.target_rate)
        gcd = math.gcd(sample_rate, self.target_rate)
        step = sample_rate // gcd
        # transform.kernel: (new, 1, taps), one row per output phase; here (taps, new).
        kernel = transform.kernel[:, 0, :].T.contiguous()
        return step, self.target_rate // gcd, transform.width, kernel


def _segment_frames(f: sf.SoundFile, path, offset: float | None, duration: float | None) -> tuple[int, int]:
    """(first frame, frame count) to read: the whole file, or the segment from offset (to the end without duration)."""
    if offset is None:
        return 0, f.frames
    start = round(offset * f.samplerate)
    if start >= f.frames:
        raise AudioError(f"{path}: offset {offset:g} s is past the end of the file ({f.frames / f.samplerate:.3f} s)")
    # A duration running past the end is cut short: NeMo's rounded durations often do.
    stop = f.frames if duration is None else min(f.frames, start + round(duration * f.samplerate))
    return start, stop - start


def _system_reason(path: str | os.PathLike, error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return "symbolic link to a missing file" if os.path.islink(path) else "file not found"
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if error.errno == errno.EACCES:
        return "permission denied"
    return (error.strerror or str(error)).lower()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
