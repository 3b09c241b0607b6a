"""Training-time augmentation of whole padded batches, on the model's device.

Waveform transforms take and return a zero-padded ``(batch, samples)`` tensor plus ``(batch,)``
sample lengths, and keep every sample past a clip's length at zero, so the MFCC front end's
batch invariance still holds. Feature transforms (SpecAugment-style masks) take
``(batch, frames, n_features)`` plus frame lengths and only touch valid frames.

Each transform draws its per-clip parameters in ``randomize_parameters`` from an explicit
``torch.Generator`` on the CPU (so a seed gives the same draws on any device), always the same
number of draws per batch whatever comes out, and ``apply`` is deterministic given them. A clip
that the probability ``p`` leaves alone gets the identity parameters (shift 0, gain 0 dB, rate 1,
noise scale 0, mask width 0), so one vectorised ``apply`` serves the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from kwsbatch.settings import SettingError

AUGMENT_PRESETS = ("none", "light", "standard", "strong")
TRANSFORM_FIELDS = ("time_shift", "zero_pad", "amplify", "speed", "noise", "time_mask", "freq_mask")
WAVEFORM_ORDER = ("speed", "time_shift", "zero_pad", "amplify", "noise")  # the order they apply in
FEATURE_ORDER = ("time_mask", "freq_mask")


@dataclass(frozen=True)
class AugmentConfig:
    """Each field is (probability per clip, range...) and matches a `kwsbatch train` flag; the defaults are the
    standard preset, and a preset or the flags lay their numbers over it (override)."""

    # The standard preset: each transform on for a share of the clips.
    time_shift: tuple[float, float] = (0.5, 0.1)  # --time-shift P,MAX_S: move the clip up to MAX_S either way
    zero_pad: tuple[float, float] = (0.3, 0.2)  # --zero-pad P,MAX_S: add up to MAX_S of silence at each end
    amplify: tuple[float, float, float] = (0.5, -10.0, 6.0)  # --amplify P,MIN_DB,MAX_DB: gain
    speed: tuple[float, float, float] = (0.5, 0.9, 1.1)  # --speed P,MIN,MAX: play faster/slower (pitch moves too)
    noise: tuple[float, float, float] = (0.5, 5.0, 25.0)  # --noise P,MIN_SNR_DB,MAX_SNR_DB: add background noise
    time_mask: tuple[float, float, float] = (0.5, 10, 1)  # --time-mask P,MAX_FRAMES,COUNT: zero runs of frames
    freq_mask: tuple[float, float, float] = (0.5, 2, 1)  # --freq-mask P,MAX_COEFFS,COUNT: zero bands of coefficients
    noise_dir: str | None = None  # --noise-dir: default _background_noise_/ beside the train manifest

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in TRANSFORM_FIELDS:
                continue
            if len(value) != len(f.default):
                raise SettingError(f.name, f"takes {len(f.default)} numbers (probability, range...), got {value}")
            object.__setattr__(self, f.name, tuple(float(v) for v in value))
        for name in TRANSFORM_FIELDS:  # each transform checks its own ranges
            try:
                self._transform(name, 16000, torch.zeros(1))
            except ValueError as e:
                raise SettingError(name, str(e)) from None

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"augment preset must be one of {AUGMENT_PRESETS}, got {name!r}")
        return _PRESETS[name]

    def override(self, **leading: tuple[float, ...]) -> "AugmentConfig":
        """This config with the leading numbers of some transforms replaced: speed=(1, 0.8) keeps max_rate."""
        changed = {}
        for name, numbers in leading.items():
            current = getattr(self, name)
            if len(numbers) > len(current):
                raise SettingError(name, f"takes at most {len(current)} numbers, got {len(numbers)}")
            changed[name] = (*numbers, *current[len(numbers) :])
        return replace(self, **changed)

    @property
    def uses_noise(self) -> bool:
        return self.noise[0] > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, *, sample_rate: int, noise: torch.Tensor | None = None) -> "Augmentation":
        """The transforms this config switches on (p > 0); noise is the 1-D background for `noise`."""
        names = [n for n in WAVEFORM_ORDER if n != "noise" or noise is not None]
        wave = [self._transform(name, sample_rate, noise) for name in names]
        feature = [self._transform(name, sample_rate, noise) for name in FEATURE_ORDER]
        return Augmentation(Compose([t for t in wave if t.p > 0]), Compose([t for t in feature if t.p > 0]))

    def _transform(self, name: str, sample_rate: int, noise: torch.Tensor | None):
        value = getattr(self, name)
        if name in ("time_shift", "zero_pad"):
            return (TimeShift if name == "time_shift" else ZeroPad)(value[0], round(value[1] * sample_rate))
        if name in ("time_mask", "freq_mask"):
            return (TimeMask if name == "time_mask" else FreqMask)(value[0], _whole(value[1]), _whole(value[2]))
        if name == "noise":
            return BackgroundNoise(noise, *value)
        return {"speed": PlaySpeed, "amplify": Amplify}[name](*value)


def _whole(value: float) -> int:
    if value != int(value):
        raise ValueError(f"frame and coefficient counts must be whole numbers, got {value}")
    return int(value)


def load_noise(folder: str | Path, sample_rate: int) -> tuple[torch.Tensor, list[str]]:
    """Every audio file under folder at sample_rate, each scaled to unit RMS, end to end (1-D)."""
    from kwsbatch.files.audio import Resampler, decode_audio, is_audio_path

    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_audio_path(p))
    resample = Resampler(sample_rate)
    parts, used = [], []
    for path in paths:
        clip = decode_audio(path, max_seconds=None)
        wave = resample(clip.samples, clip.sample_rate)
        rms = wave.pow(2).mean().sqrt() if len(wave) else 0.0
        if rms > 0:
            parts.append(wave / rms)
            used.append(path.name)
    return (torch.cat(parts) if parts else torch.zeros(0)), used


class Augmentation:
    """The waveform stage and the feature stage of one configuration."""

    def __init__(self, waveform: "Compose", features: "Compose"):
        self.waveform = waveform
        self.features = features

    def __bool__(self) -> bool:
        return bool(self.waveform.transforms or self.features.transforms)

    def __repr__(self) -> str:
        return f"Augmentation(waveform={self.waveform!r}, features={self.features!r})"


class Compose:
    """Transforms applied in order; each draws from the same generator."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, batch: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator):
        for transform in self.transforms:
            batch, lengths = transform(batch, lengths, generator)
        return batch, lengths

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class _Transform:
    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, batch: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator):
        params = self.randomize_parameters(lengths.cpu(), generator)
        return self.apply(batch, lengths, **{k: v.to(batch.device) for k, v in params.items()})

    def _applied(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator) < self.p

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({args})"


class WaveTransform(_Transform):
    """(batch, samples) + (batch,) lengths -> the same, zero past each clip's new length."""


class FeatureTransform(_Transform):
    """(batch, frames, n_features) + (batch,) frame lengths -> the same shapes and lengths."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _integers(n: int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [0, high] (inclusive), per clip when high is a tensor."""
    return torch.floor(torch.rand(n, generator=generator) * (torch.as_tensor(high) + 1)).long()


def _valid(width: int, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def _move(batch: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor, new_lengths: torch.Tensor):
    """out[b, t] = batch[b, t - offsets[b]] where that is inside the clip, else 0; width fits new_lengths."""
    width = max(int(new_lengths.max()), 1)
    source = torch.arange(width, device=batch.device) - offsets[:, None]
    inside = (source >= 0) & (source < lengths[:, None]) & _valid(width, new_lengths)
    source = source.clamp(0, batch.shape[1] - 1)
    return torch.gather(batch, 1, source) * inside, new_lengths


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
        shift = _integers(n, 2 * self.max_samples, generator) - self.max_samples
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
        before = _integers(n, self.max_samples, generator)
        after = _integers(n, self.max_samples, generator)
        return {"before": torch.where(applied, before, 0), "after": torch.where(applied, after, 0)}

    def apply(self, batch, lengths, *, before, after):
        return _move(batch, lengths, before, lengths + before + after)


class Amplify(WaveTransform):
    """Scale a clip by a gain drawn uniformly in decibels."""

    def __init__(self, p: float = 0.5, min_gain_db: float = -6.0, max_gain_db: float = 6.0):
        super().__init__(p)
        if not -60.0 <= min_gain_db <= max_gain_db <= 40.0:
            raise ValueError(f"Amplify: need -60 <= min_gain_db <= max_gain_db <= 40, got {min_gain_db}, {max_gain_db}")
        self.min_gain_db, self.max_gain_db = min_gain_db, max_gain_db

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        gain_db = _uniform(n, self.min_gain_db, self.max_gain_db, generator)
        return {"gain": torch.where(applied, 10.0 ** (gain_db / 20.0), 1.0)}

    def apply(self, batch, lengths, *, gain):
        return batch * gain[:, None].to(batch.dtype), lengths


class PlaySpeed(WaveTransform):
    """Play a clip faster (rate > 1, shorter) or slower, by linear interpolation; pitch moves with it."""

    def __init__(self, p: float = 0.5, min_rate: float = 0.9, max_rate: float = 1.1):
        super().__init__(p)
        if not 0.25 <= min_rate <= max_rate <= 4.0:
            raise ValueError(f"PlaySpeed: need 0.25 <= min_rate <= max_rate <= 4, got {min_rate}, {max_rate}")
        self.min_rate, self.max_rate = min_rate, max_rate

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        # Uniform in log-rate, so 0.8..1.25 slows down as often as it speeds up.
        rate = torch.exp(_uniform(n, math.log(self.min_rate), math.log(self.max_rate), generator))
        return {"rate": torch.where(applied, rate, 1.0)}

    def apply(self, batch, lengths, *, rate):
        # Output sample t reads input position t * rate; the last output reads at most sample n - 1.
        # float32 positions are off by under 1% of a sample for clips up to a minute.
        new_lengths = torch.where(lengths > 0, torch.floor((lengths - 1) / rate.double()).long() + 1, lengths)
        width = max(int(new_lengths.max()), 1)
        position = torch.arange(width, device=batch.device, dtype=torch.float32) * rate.float()[:, None]
        left = position.floor().long()
        frac = (position - left).to(batch.dtype)
        last = (lengths[:, None] - 1).clamp(min=0)
        left = torch.minimum(left, last).clamp(max=batch.shape[1] - 1)
        right = torch.minimum(left + 1, last).clamp(max=batch.shape[1] - 1)
        out = torch.gather(batch, 1, left) * (1 - frac) + torch.gather(batch, 1, right) * frac
        return out * _valid(width, new_lengths), new_lengths


class BackgroundNoise(WaveTransform):
    """Add a segment of a long background recording at a signal-to-noise ratio drawn in decibels.

    The noise is read from a random offset (segments may wrap around the end) and scaled so its
    RMS over the clip's valid samples sits snr dB below the clip's own RMS. A silent clip stays
    silent, since its SNR reference is zero.
    """

    def __init__(self, noise: torch.Tensor, p: float = 0.5, min_snr_db: float = 5.0, max_snr_db: float = 25.0):
        super().__init__(p)
        if noise.dim() != 1:
            raise ValueError(f"BackgroundNoise: noise must be 1-D, got shape {tuple(noise.shape)}")
        if not -10.0 <= min_snr_db <= max_snr_db <= 60.0:
            raise ValueError(f"BackgroundNoise: need -10 <= min_snr_db <= max_snr_db <= 60, got {min_snr_db}, {max_snr_db}")
        self.noise = noise.float()
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db

    def __repr__(self) -> str:
        return f"BackgroundNoise(p={self.p!r}, min_snr_db={self.min_snr_db!r}, max_snr_db={self.max_snr_db!r}, noise_samples={len(self.noise)})"

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        offset = _integers(n, max(len(self.noise) - 1, 0), generator)
        snr_db = _uniform(n, self.min_snr_db, self.max_snr_db, generator)
        level = torch.where(applied & (len(self.noise) > 0), 10.0 ** (-snr_db / 20.0), 0.0)
        return {"offset": offset, "level": level}

    def apply(self, batch, lengths, *, offset, level):
        if len(self.noise) == 0:
            return batch, lengths
        noise = self.noise.to(batch.device)
        index = (offset[:, None] + torch.arange(batch.shape[1], device=batch.device)) % len(noise)
        segment = noise[index] * _valid(batch.shape[1], lengths)
        n = lengths.clamp(min=1).to(batch.dtype)
        clip_rms = (batch.pow(2).sum(1) / n).sqrt()
        noise_rms = (segment.pow(2).sum(1) / n).sqrt().clamp(min=1e-8)
        scale = (level.to(batch.dtype) * clip_rms / noise_rms)[:, None]
        return batch + segment * scale, lengths


class TimeMask(FeatureTransform):
    """Zero `count` runs of up to max_frames consecutive frames (the normalised features' mean)."""

    def __init__(self, p: float = 0.5, max_frames: int = 10, count: int = 1):
        super().__init__(p)
        if max_frames < 0 or count < 1:
            raise ValueError(f"TimeMask: need max_frames >= 0 and count >= 1, got {max_frames}, {count}")
        self.max_frames, self.count = max_frames, count

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        width = _integers(n * self.count, self.max_frames, generator).view(n, self.count)
        width = torch.minimum(width, lengths[:, None]) * applied[:, None]
        start = torch.floor(torch.rand(n, self.count, generator=generator) * (lengths[:, None] - width + 1)).long()
        return {"start": start, "width": width}

    def apply(self, features, frame_lengths, *, start, width):
        t = torch.arange(features.shape[1], device=features.device)[None, None, :]
        masked = ((t >= start[:, :, None]) & (t < (start + width)[:, :, None])).any(1)
        return features.masked_fill(masked[:, :, None], 0.0), frame_lengths


class FreqMask(FeatureTransform):
    """Zero `count` bands of up to max_bins consecutive feature coefficients over a whole clip."""

    def __init__(self, p: float = 0.5, max_bins: int = 2, count: int = 1):
        super().__init__(p)
        if max_bins < 0 or count < 1:
            raise ValueError(f"FreqMask: need max_bins >= 0 and count >= 1, got {max_bins}, {count}")
        self.max_bins, self.count = max_bins, count

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        width = _integers(n * self.count, self.max_bins, generator).view(n, self.count) * applied[:, None]
        # Start as a fraction of the room left, so the band always fits whatever n_features is.
        start = torch.rand(n, self.count, generator=generator)
        return {"start": start, "width": width}

    def apply(self, features, frame_lengths, *, start, width):
        n_features = features.shape[2]
        width = width.clamp(max=n_features)
        first = torch.floor(start * (n_features - width + 1)).long()
        f = torch.arange(n_features, device=features.device)[None, None, :]
        masked = ((f >= first[:, :, None]) & (f < (first + width)[:, :, None])).any(1)
        return features.masked_fill(masked[:, None, :], 0.0), frame_lengths


# Every transform off, at the ranges a flag such as `--augment none --amplify 1` then uses.
_NONE = AugmentConfig(
    time_shift=(0.0, 0.1),
    zero_pad=(0.0, 0.2),
    amplify=(0.0, -6, 6),
    speed=(0.0, 0.9, 1.1),
    noise=(0.0, 5, 25),
    time_mask=(0.0, 10, 1),
    freq_mask=(0.0, 2, 1),
)
_PRESETS = {
    "none": _NONE,
    "light": replace(_NONE, time_shift=(0.5, 0.1), amplify=(0.5, -6, 6), noise=(0.3, 10, 30)),
    "standard": AugmentConfig(),
    "strong": AugmentConfig(
        time_shift=(0.7, 0.15),
        zero_pad=(0.5, 0.3),
        amplify=(0.7, -15, 6),
        speed=(0.7, 0.8, 1.25),
        noise=(0.8, 0, 20),
        time_mask=(0.8, 12, 2),
        freq_mask=(0.8, 2, 2),
    ),
}
