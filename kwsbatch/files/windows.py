"""Long recordings read as fixed windows, a block at a time, in pieces that workers read on their own.

A one-hour recording is never held whole: the reader keeps one block (a minute) plus one window
of audio, so memory does not depend on the file's length. Windows start every hop on a grid from
0; when the grid leaves an uncovered tail, one more window is aligned to the file's end, so the
last seconds are always heard. A file shorter than one window is a single window, the whole file.

A piece is a run of grid windows (plan_pieces cuts a file into pieces of about a minute from its
header), so that loader workers share a long recording instead of one worker reading all of it
while the others wait. The last piece runs to wherever the file really ends, and the piece in
which it ends reads the tail window.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from kwsbatch.errors import AudioError
from kwsbatch.files.audio import block_frames, open_audio, read_mono, shortfall_warning
from kwsbatch.files.windowing import WindowConfig

BLOCK_SECONDS = 60.0  # audio read from disk at a time, and about the length of a piece
# No format we read packs more frames into a byte: FLAC's smallest frame is about 12 bytes for
# 65,535 frames, an Ogg packet a byte for at most 8,192. A header claiming more than its file can
# hold is believed only this far when planning; the last piece reads on to the true end anyway.
MAX_FRAMES_PER_BYTE = 8192


def plan_pieces(path: str | os.PathLike, config: WindowConfig, *, block_s: float = BLOCK_SECONDS) -> list[tuple[int, int | None]]:
    """A file's pieces as (first grid window, stop) pairs, about block_s of audio each; the last one's stop is None.

    From the header alone, capped by the file's size; a file that cannot be opened (or is not a
    regular file, which is never opened) is one piece, whose reader then reports the error.
    """
    try:
        with open_audio(path) as audio:
            rate, frames = audio.sound.samplerate, min(audio.sound.frames, audio.size_bytes * MAX_FRAMES_PER_BYTE)
    except AudioError:
        return [(0, None)]
    window, hop = config.frames(rate)
    grid = (frames - window) // hop + 1 if frames >= window else 0
    per_piece = max(1, round(block_s * rate / hop))
    cuts = list(range(0, max(grid, 1), per_piece))
    return [*zip(cuts, cuts[1:]), (cuts[-1], None)]


class WindowReader:
    """Iterate (start_frame, end_frame, mono samples) windows of one file (or of one piece), at the file's own rate.

    With first and stop, only grid windows first <= k < stop (stop None: to the end), and the tail
    window when the file ends within them. After iteration, ``frames`` is the number of frames in
    the file, its true length even when its header was wrong about it, or None when this piece
    stopped before the end; ``warning`` then says so when the header promised more than the file holds.
    """

    def __init__(
        self, path: str | os.PathLike, config: WindowConfig, *, first: int = 0, stop: int | None = None, block_s: float = BLOCK_SECONDS
    ):
        self.path = path
        self.config = config
        self.first, self.stop = first, stop
        self.block_s = block_s
        self.sample_rate = 0
        self.channels = 0
        self.frames: int | None = None
        self.warning = ""

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate and self.frames else 0.0

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        with open_audio(self.path) as audio:
            f = audio.sound
            self.sample_rate, self.channels = f.samplerate, f.channels
            window, hop = self.config.frames(f.samplerate)
            block = max(window, min(round(self.block_s * f.samplerate), block_frames(f)))
            start = self.first * hop
            if start and start >= f.frames:
                return  # planned from a longer file (or a header that promised more): the piece before saw the end
            if start:
                f.seek(start)
            buffer, buffer_start, k, end_of_file = np.zeros(0, np.float32), start, self.first, False
            while self.stop is None or k < self.stop:
                while not end_of_file and buffer_start + len(buffer) < start + window:
                    data = read_mono(f, block, self.path)
                    end_of_file = len(data) < block
                    if len(data):
                        buffer = np.concatenate([buffer, data])
                if buffer_start + len(buffer) < start + window:
                    break
                yield start, start + window, buffer[start - buffer_start : start - buffer_start + window].copy()
                k, start = k + 1, start + hop
                # Keep from the last window's start on: the end-aligned tail window starts after it.
                keep_from = start - hop
                if keep_from - buffer_start >= block:
                    buffer, buffer_start = buffer[keep_from - buffer_start :], keep_from
            else:
                return  # this piece's windows all fit: the file goes on, and its tail is a later piece's
            end = buffer_start + len(buffer)
            if self.first and end == buffer_start:
                return  # the header promised more than the file holds: the piece before saw the end
            self.frames = end
            if end == 0:
                raise AudioError(f"{self.path}: contains no samples")
            self.warning = shortfall_warning(end, audio.promised_frames, f.samplerate)
            yield from self._tail(f, buffer, buffer_start, window, hop)

    def _tail(self, f: sf.SoundFile, buffer: np.ndarray, buffer_start: int, window: int, hop: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """The end-aligned window over the audio after the last grid window, when it falls in this piece."""
        end = self.frames
        full = (end - window) // hop + 1 if end >= window else 0  # grid windows inside the file
        covered = (full - 1) * hop + window if full else 0
        if end <= covered or full < self.first or (self.stop is not None and full >= self.stop):
            return
        tail_start = max(0, end - window)
        if tail_start >= buffer_start:
            yield tail_start, end, buffer[tail_start - buffer_start :].copy()
            return
        f.seek(tail_start)  # no grid window of this piece fits: the tail reaches back into the piece before
        yield tail_start, end, read_mono(f, end - tail_start, self.path)
