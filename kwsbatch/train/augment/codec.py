"""Lossy codec round trips: encode and decode a clip in memory with libsndfile, as a phone or an app would.

Unlike the other transforms this one runs clip by clip on the CPU (libsndfile has no batched
encoder), so its probability is kept low; its cost per batch is in docs/training.md ("What each
transform buys on real speech"). libsndfile decodes Vorbis, Opus and MP3 without the encoder's
delay, so the decoded clip lines up with the original sample for sample; it is cut or zero-padded
to the clip's length.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import soundfile as sf
import torch

from kwsbatch.train.augment.base import WaveTransform, check_range, integers, uniform
from kwsbatch.train.config import CODECS, DEFAULT_CODECS

# The codecs whose bitrate follows the compression level, and the highest level libsndfile takes:
# its LAME setup refuses 1.0 (mp3 at 0.975 is 25 kbit/s for 16 kHz speech).
LEVELLED = {"vorbis": 1.0, "opus": 1.0, "mp3": 0.975}


def round_trip(samples: np.ndarray, codec: str, level: float, sample_rate: int) -> np.ndarray:
    """(samples,) float32 through codec at compression level (0 best .. 1 smallest), the same length back."""
    container, subtype, coded_rate = CODECS[codec]
    coded_rate = coded_rate or sample_rate
    audio = samples if coded_rate == sample_rate else _resampler(coded_rate)(samples, sample_rate).numpy()
    buffer = io.BytesIO()
    options = {"compression_level": level * LEVELLED[codec]} if codec in LEVELLED else {}
    sf.write(buffer, np.clip(audio, -1.0, 1.0), coded_rate, format=container, subtype=subtype, **options)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    if coded_rate != sample_rate:
        decoded = _resampler(sample_rate)(decoded, coded_rate).numpy()
    out = np.zeros(len(samples), dtype=np.float32)
    out[: min(len(samples), len(decoded))] = decoded[: len(samples)]
    return out


@functools.lru_cache(maxsize=None)
def _resampler(rate: int):
    from kwsbatch.files.resample import Resampler

    return Resampler(rate)


class CodecRoundTrip(WaveTransform):
    """Pass a clip through a codec drawn from `codecs` at a compression level drawn in [min_level, max_level]."""

    def __init__(
        self,
        p: float = 0.2,
        min_level: float = 0.5,
        max_level: float = 1.0,
        *,
        codecs: tuple[str, ...] = tuple(DEFAULT_CODECS.split(",")),
        sample_rate: int = 16000,
    ):
        super().__init__(p)
        check_range("CodecRoundTrip", min_level, max_level, 0.0, 1.0, "level")
        unknown = [c for c in codecs if c not in CODECS]
        if unknown or not codecs:
            raise ValueError(f"CodecRoundTrip: codecs must be some of {', '.join(CODECS)}, got {', '.join(codecs) or 'none'}")
        missing = [c for c in codecs if CODECS[c][1] not in sf.available_subtypes(CODECS[c][0])]
        if missing and p > 0:
            raise ValueError(f"CodecRoundTrip: this libsndfile ({sf.__libsndfile_version__}) cannot write {', '.join(missing)}")
        self.min_level, self.max_level, self.codecs, self.sample_rate = min_level, max_level, tuple(codecs), sample_rate

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        codec = integers(n, len(self.codecs) - 1, generator)
        level = uniform(n, self.min_level, self.max_level, generator)
        return {"codec": torch.where(applied, codec, -1), "level": level}

    def apply(self, batch, lengths, *, codec, level):
        """codec (batch,): an index into codecs, -1 for none; level (batch,) compression levels."""
        rows = (codec >= 0).nonzero().flatten().tolist()
        if not rows:
            return batch, lengths
        out = batch.clone()
        waves = batch[rows].cpu().numpy()
        for i, row in enumerate(rows):
            n = int(lengths[row])
            if n:
                coded = round_trip(waves[i, :n], self.codecs[int(codec[row])], float(level[row]), self.sample_rate)
                out[row, :n] = torch.from_numpy(coded).to(out.device, out.dtype)
        return out, lengths
