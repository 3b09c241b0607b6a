"""Waveform transforms that move, stretch, scale a clip or add background noise to it."""

from __future__ import annotations

from pathlib import Path

import torch

from kwsbatch.train.augment.base import WaveTransform, check_range, integers, log_uniform, on_device, uniform, valid

NOISE_LABEL = "_silence_"  # the manifest rows --noise-dir takes as background noise


def load_noise(source: str | Path, sample_rate: int) -> tuple[torch.Tensor, list[str]]:
    """Background noise at sample_rate, each recording scaled to unit RMS, end to end (1-D).

    source is a folder (every audio file under it) or a manifest (its rows labelled _silence_,
    e.g. the real-noise clips of a training split, never those of its validation or test split).
    """
    from kwsbatch.files.audio import decode_audio, is_audio_path
    from kwsbatch.files.manifest import read_manifest
    from kwsbatch.files.resample import Resampler

    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and is_audio_path(p))
        names = [p.name for p in paths]
    else:
        rows = [row for row in read_manifest(source) if row.label == NOISE_LABEL]
        paths, names = [row.audio_path for row in rows], [row.path for row in rows]
    resample = Resampler(sample_rate)
    parts, used = [], []
    for path, name in zip(paths, names):
        clip = decode_audio(path, max_seconds=None)
        wave = resample(clip.samples, clip.sample_rate)
        rms = wave.pow(2).mean().sqrt() if len(wave) else 0.0
        if rms > 0:
            parts.append(wave / rms)
            used.append(name)
    return (torch.cat(parts) if parts else torch.zeros(0)), used


def _move(batch: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, new_lengths: torch.Tensor):
    """out[b, t] = batch[b, t - offsets[b]] where that is inside the clip, else 0; width fits new_lengths (all three on the host)."""
    width = max(int(new_lengths.max()), 1)
    if batch.device.type == "cpu":
        return _move_rows(batch, lengths, offsets, new_lengths, width), new_lengths
    return _move_gathered(batch, lengths, offsets, new_lengths, width), new_lengths


def _move_rows(batch, lengths, offsets, new_lengths, width: int) -> torch.Tensor:
    # On the CPU a slice copy per clip: a tenth of the time of building and gathering a (batch, width) index.
    out = batch.new_zeros(len(batch), width)
    for row, (n, offset, m) in enumerate(zip(lengths.tolist(), offsets.tolist(), new_lengths.tolist())):
        start, stop = max(offset, 0), min(offset + n, m)
        if start < stop:
            out[row, start:stop] = batch[row, start - offset : stop - offset]
    return out


def _move_gathered(batch, lengths, offsets, new_lengths, width: int) -> torch.Tensor:
    # On a GPU one gather for the batch, with no per-clip work on the host.
    source = torch.arange(width, device=batch.device) - on_device(offsets, batch)[:, None]
    inside = (source >= 0) & (source < on_device(lengths, batch)[:, None]) & valid(width, new_lengths, batch)
    source = source.clamp(0, batch.shape[1] - 1)
    return torch.gather(batch, 1, source) * inside


class TimeShift(WaveTransform):
    """Move a clip's content up to max_samples earlier or later; what leaves the clip is cut."""

    def __init__(self, p: float = 0.5, max_samples: int = 1600):
        super().__init__(p)
        if max_samples < 0:
            raise ValueError(f"TimeShift: max_samples must be >= 0, got {max_samples}")
        self.max_samples = max_samples

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        shift = integers(n, 2 * self.max_samples, generator) - self.max_samples
        return {"shift": torch.where(applied, shift, 0)}

    def apply(self, batch, lengths, *, shift):
        return _move(batch, lengths, shift, lengths)


class ZeroPad(WaveTransform):
    """Add up to max_samples of silence before and after a clip; its length grows to match."""

    def __init__(self, p: float = 0.3, max_samples: int = 3200):
        super().__init__(p)
        if max_samples < 0:
            raise ValueError(f"ZeroPad: max_samples must be >= 0, got {max_samples}")
        self.max_samples = max_samples

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        before = integers(n, self.max_samples, generator)
        after = integers(n, self.max_samples, generator)
        return {"before": torch.where(applied, before, 0), "after": torch.where(applied, after, 0)}

    def apply(self, batch, lengths, *, before, after):
        return _move(batch, lengths, before, lengths + before + after)


class Amplify(WaveTransform):
    """Scale a clip by a gain drawn uniformly in decibels."""

    def __init__(self, p: float = 0.5, min_gain_db: float = -6.0, max_gain_db: float = 6.0):
        super().__init__(p)
        check_range("Amplify", min_gain_db, max_gain_db, -60.0, 40.0, "gain_db")
        self.min_gain_db, self.max_gain_db = min_gain_db, max_gain_db

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        gain_db = uniform(n, self.min_gain_db, self.max_gain_db, generator)
        return {"gain": torch.where(applied, 10.0 ** (gain_db / 20.0), 1.0)}

    def apply(self, batch, lengths, *, gain):
        return batch * on_device(gain, batch)[:, None].to(batch.dtype), lengths


class PlaySpeed(WaveTransform):
    """Play a clip faster (rate > 1, shorter) or slower, by linear interpolation; pitch moves with it."""

    def __init__(self, p: float = 0.5, min_rate: float = 0.9, max_rate: float = 1.1):
        super().__init__(p)
        check_range("PlaySpeed", min_rate, max_rate, 0.25, 4.0, "rate")
        self.min_rate, self.max_rate = min_rate, max_rate

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        rate = log_uniform(n, self.min_rate, self.max_rate, generator)
        return {"rate": torch.where(applied, rate, 1.0)}

    def apply(self, batch, lengths, *, rate):
        # Output sample t reads input position t * rate; the last output reads at most sample n - 1.
        # float32 positions are off by under 1% of a sample for clips up to a minute.
        new_lengths = torch.where(lengths > 0, torch.floor((lengths - 1) / rate.double()).long() + 1, lengths)
        width = max(int(new_lengths.max()), 1)
        stretch = _stretch_rows if batch.device.type == "cpu" else _stretch_batched
        return stretch(batch, lengths, rate, new_lengths, width), new_lengths


def _stretch_batched(batch, lengths, rate, new_lengths, width: int) -> torch.Tensor:
    # On a GPU the whole batch at once, with no per-clip work on the host.
    position = torch.arange(width, device=batch.device, dtype=torch.float32) * on_device(rate.float(), batch)[:, None]
    last = on_device((lengths - 1).clamp(min=0), batch)[:, None]
    return _interpolate(batch, position, last) * valid(width, new_lengths, batch)


def _stretch_rows(batch, lengths, rate, new_lengths, width: int) -> torch.Tensor:
    # On the CPU each clip alone over its own new length (a clip at rate 1 is copied): the batched
    # form reads the whole padded width for every clip, half of which the default p leaves as they are.
    out = batch.new_zeros(len(batch), width)
    for row, (n, r, m) in enumerate(zip(lengths.tolist(), rate.float().tolist(), new_lengths.tolist())):
        if r == 1.0:
            out[row, :m] = batch[row, :m]
        elif m > 0:
            position = torch.arange(m, dtype=torch.float32) * torch.tensor(r, dtype=torch.float32)
            out[row, :m] = _interpolate(batch[row : row + 1], position[None], torch.tensor([[max(n - 1, 0)]]))[0]
    return out


def _interpolate(batch: torch.Tensor, position: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """batch linearly interpolated at (rows, k) float positions, each read no further than its row's last sample."""
    left = position.floor().long()
    frac = (position - left).to(batch.dtype)
    left = torch.minimum(left, last).clamp(max=batch.shape[1] - 1)
    right = torch.minimum(left + 1, last).clamp(max=batch.shape[1] - 1)
    return torch.gather(batch, 1, left) * (1 - frac) + torch.gather(batch, 1, right) * frac


class BackgroundNoise(WaveTransform):
    """Add a segment of a long background recording at a signal-to-noise ratio drawn in decibels.

    The SNR is drawn from the triangular distribution on [min_snr_db, max_snr_db] (the mean of two
    uniform draws): real recordings cluster at moderate SNRs, so 0..20 dB puts 3/4 of the clips
    in 5..15 dB and few at the extremes. The noise is read from a random offset (segments may wrap around the end) and scaled so its
    RMS over the clip's valid samples sits snr dB below the clip's own RMS. A silent clip stays
    silent, since its SNR reference is zero.
    """

    def __init__(self, noise: torch.Tensor, p: float = 0.5, min_snr_db: float = 5.0, max_snr_db: float = 25.0):
        super().__init__(p)
        if noise.dim() != 1:
            raise ValueError(f"BackgroundNoise: noise must be 1-D, got shape {tuple(noise.shape)}")
        check_range("BackgroundNoise", min_snr_db, max_snr_db, -10.0, 60.0, "snr_db")
        self.noise = noise.float()
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db
        self._on_device: dict[torch.device, torch.Tensor] = {torch.device("cpu"): self.noise}  # copied once per device

    def __repr__(self) -> str:
        return f"BackgroundNoise(p={self.p!r}, min_snr_db={self.min_snr_db!r}, max_snr_db={self.max_snr_db!r}, noise_samples={len(self.noise)})"

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        offset = integers(n, max(len(self.noise) - 1, 0), generator)
        snr_db = (uniform(n, self.min_snr_db, self.max_snr_db, generator) + uniform(n, self.min_snr_db, self.max_snr_db, generator)) / 2
        level = torch.where(applied & (len(self.noise) > 0), 10.0 ** (-snr_db / 20.0), 0.0)
        return {"offset": offset, "level": level}

    def apply(self, batch, lengths, *, offset, level):
        if len(self.noise) == 0:
            return batch, lengths
        if batch.device not in self._on_device:
            self._on_device[batch.device] = self.noise.to(batch.device)
        noise = self._on_device[batch.device]
        index = (on_device(offset, batch)[:, None] + torch.arange(batch.shape[1], device=batch.device)) % len(noise)
        segment = noise[index] * valid(batch.shape[1], lengths, batch)
        n = on_device(lengths.clamp(min=1), batch).to(batch.dtype)
        clip_rms = (batch.pow(2).sum(1) / n).sqrt()
        noise_rms = (segment.pow(2).sum(1) / n).sqrt().clamp(min=1e-8)
        scale = (on_device(level, batch).to(batch.dtype) * clip_rms / noise_rms)[:, None]
        return batch + segment * scale, lengths
