"""Audio decoding: any regular file soundfile reads -> mono float32 at the file's own rate.

Decoding is numpy and soundfile only; resample.py (torch, imported lazily) brings clips to the
model's rate beside it, in the loader's workers (loader.py).

What a folder of a real corpus may hold, and what decoding does with it:
- any name the file system allows, including bytes that are not UTF-8 (Python hands them over
  as surrogate escapes): files are opened by os.open, never by soundfile's own name encoding;
- things that are not regular files (a FIFO named x.wav, a socket, /dev/zero behind a link):
  refused by their stat before they are opened, as reading them blocks forever or never ends;
- a header claiming a rate outside resample.py's range: refused; a header claiming more frames
  than the file holds (a WAV still being written): read in blocks, so memory follows the data
  actually there, and labelled with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from kwsbatch.errors import AudioError
from kwsbatch.files.resample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

# Extensions picked up when a folder is scanned; a file named explicitly is tried whatever its name.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})

# A clip longer than this is refused rather than labelled from its first seconds: keyword
# clips are short, and a long recording needs window mode, not truncation.
DEFAULT_MAX_SECONDS = 30.0

READ_BLOCK_SAMPLES = 1 << 22  # samples (frames x channels) read at a time: 16 MiB as float32

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


@dataclass(frozen=True)
class DecodedClip:
    """A file's audio mixed to mono, at the file's own sample rate."""

    samples: np.ndarray  # (n_samples,) float32
    sample_rate: int  # the file's own rate, before resampling
    channels: int  # the file's own channel count, before mixing
    warning: str = ""  # labelled all the same, but something is off (a header promising more than the file holds)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class AudioFile:
    """An open audio file and what its header promised, for a warning when the data falls short."""

    sound: sf.SoundFile
    promised_frames: int  # frames the header claims; more than sound.frames when the file is cut short
    size_bytes: int


def is_audio_path(path: str | os.PathLike) -> bool:
    # os.path, not Path(path).suffix: this runs once per file of a folder scan, and pathlib costs 10x more.
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def file_kind(mode: int) -> str:
    """What a stat mode names, for messages: 'a FIFO (named pipe)', 'a folder', ..."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


@contextlib.contextmanager
def open_audio(path: str | os.PathLike) -> Iterator[AudioFile]:
    """Open a regular file for decoding; raise AudioError for anything else, before opening it.

    stat first, so a FIFO, socket or device is never opened (opening a FIFO blocks until a writer
    comes; a device may never end, or act on being opened); then fstat of what was opened, in case
    it was swapped for one in between. O_NONBLOCK keeps that open from blocking on a FIFO swapped
    in (it changes nothing for a regular file's reads); O_NOCTTY keeps a terminal from becoming ours.
    """
    with reading_errors(path):
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise AudioError(f"{path}: is {file_kind(before.st_mode)}, not an audio file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
                raise AudioError(f"{path}: was replaced while being opened (now {file_kind(opened.st_mode)})")
            if opened.st_size == 0:
                raise AudioError(f"{path}: empty file (0 bytes)")
            with sf.SoundFile(fd, closefd=False) as sound:
                if not MIN_SAMPLE_RATE <= sound.samplerate <= MAX_SAMPLE_RATE:
                    raise AudioError(
                        f"{path}: its header claims a sample rate of {sound.samplerate:,} Hz; "
                        f"kwsbatch reads {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE:,} Hz"
                    )
                yield AudioFile(sound, _promised_frames(fd, sound, opened.st_size), opened.st_size)
        finally:
            os.close(fd)


def _promised_frames(fd: int, sound: sf.SoundFile, size: int) -> int:
    """The frames a file's header promises. libsndfile trims a WAV's count to the bytes present,
    so a WAV's data chunk size is read here (0xFFFFFFFF, a streaming writer's "not known yet",
    promises 4 GiB); other formats report the header's own count."""
    head = os.pread(fd, 512, 0)  # one read holds the chunk headers of most WAVs
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return sound.frames
    offset = 12
    for _ in range(64):  # chunks before the data: fmt, fact, LIST, bext, junk...
        header = head[offset : offset + 8] if offset + 8 <= len(head) else os.pread(fd, 8, offset)
        if len(header) < 8:
            break
        size_field = int.from_bytes(header[4:], "little")
        if header[:4] == b"data":
            present = size - offset - 8
            if size_field > present > 0 and sound.frames:
                return math.ceil(sound.frames * size_field / present)
            break
        offset += 8 + size_field + (size_field & 1)
    return sound.frames


def shortfall_warning(frames: int, promised: int, sample_rate: int) -> str:
    """The row's warning when a file holds fewer frames than its header promises, else ''."""
    if frames >= promised:
        return ""
    return (
        f"the file holds {frames / sample_rate:.3f} s of the {promised / sample_rate:.3f} s its header promises "
        "(cut short, or still being written): labelled from what is there"
    )


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
    with open_audio(path) as audio:
        f = audio.sound
        start, frames = _segment_frames(f, path, offset, duration)
        if max_seconds is not None and frames > max_seconds * f.samplerate:
            raise AudioError(
                f"{path}: {frames / f.samplerate:.1f} s is longer than the {max_seconds:g} s limit for a clip "
                "(label long recordings with --window)"
            )
        if start:
            f.seek(start)
        samples = read_frames(f, frames, path)
        warning = shortfall_warning(start + len(samples) if offset is None else f.frames, audio.promised_frames, f.samplerate)
        sample_rate, channels = f.samplerate, f.channels
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    return DecodedClip(samples, sample_rate, channels, warning)


def read_frames(f: sf.SoundFile, frames: int, path: str | os.PathLike) -> np.ndarray:
    """Up to `frames` frames from the file's position as mono float32, read in blocks.

    Never soundfile's read(-1), which allocates what the header claims before reading: a header
    claiming billions of frames would take that much memory for a file holding a second.
    """
    step = block_frames(f)
    if frames <= step:
        return read_mono(f, frames, path)
    blocks = []
    while frames > 0 and (block := read_mono(f, min(frames, step), path)).size:
        blocks.append(block)
        frames -= len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def block_frames(f: sf.SoundFile) -> int:
    """Frames in one block of READ_BLOCK_SAMPLES, whatever the channel count."""
    return max(1, READ_BLOCK_SAMPLES // f.channels)


def read_mono(f: sf.SoundFile, frames: int, path: str | os.PathLike) -> np.ndarray:
    """The next `frames` frames of an open file as mono float32, checked finite.

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
    """Turn whatever the system or soundfile raises while opening or reading path into a one-line AudioError."""
    try:
        yield
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(f"{path}: cannot decode audio ({_first_line(e.error_string)})") from None
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

