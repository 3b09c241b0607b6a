"""AugmentConfig: which transforms a training run uses, with what probability and range, and the presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch

from kwsbatch.settings import SettingError
from kwsbatch.train.augment.base import Augmentation, Compose
from kwsbatch.train.augment.channel import BandLimit, Equalizer, Telephone
from kwsbatch.train.augment.codec import CodecRoundTrip
from kwsbatch.train.augment.features import FreqMask, TimeMask
from kwsbatch.train.augment.room import RoomReverb
from kwsbatch.train.augment.voice import PitchShift, VocalTractWarp
from kwsbatch.train.augment.waveform import Amplify, BackgroundNoise, PlaySpeed, TimeShift, ZeroPad
from kwsbatch.train.config import AUGMENT_PRESETS, CODECS, DEFAULT_CODECS, DEFAULT_ROOMS, ROOM_MODELS


@dataclass(frozen=True)
class AugmentConfig:
    """Each tuple field is (probability per clip, range...) and matches a `kwsbatch train` flag; the defaults
    are the standard preset, and a preset or the flags lay their numbers over it (override)."""

    # The standard preset: these transforms on for a share of the clips, the others off.
    time_shift: tuple[float, float] = (0.5, 0.1)  # --time-shift P,MAX_S: move the clip up to MAX_S either way
    zero_pad: tuple[float, float] = (0.3, 0.2)  # --zero-pad P,MAX_S: add up to MAX_S of silence at each end
    amplify: tuple[float, float, float] = (0.5, -10.0, 6.0)  # --amplify P,MIN_DB,MAX_DB: gain
    speed: tuple[float, float, float] = (0.5, 0.9, 1.1)  # --speed P,MIN,MAX: play faster/slower (pitch moves too)
    pitch: tuple[float, float, float] = (0.0, -3.0, 3.0)  # --pitch P,MIN_SEMITONES,MAX_SEMITONES: same duration
    vtlp: tuple[float, float, float] = (0.0, 0.9, 1.1)  # --vtlp P,MIN_ALPHA,MAX_ALPHA: move the formants
    reverb: tuple[float, float, float] = (0.0, 0.2, 0.6)  # --reverb P,MIN_RT60_S,MAX_RT60_S: a simulated room
    eq: tuple[float, float] = (0.0, 6.0)  # --eq P,MAX_DB: a random smooth EQ curve
    band_limit: tuple[float, ...] = (0.0, 50.0, 400.0, 3000.0, 8000.0)  # --band-limit P,MIN_HP,MAX_HP,MIN_LP,MAX_LP (Hz)
    telephone: tuple[float] = (0.0,)  # --telephone P: the 300-3400 Hz band of a call
    noise: tuple[float, float, float] = (0.5, 5.0, 25.0)  # --noise P,MIN_SNR_DB,MAX_SNR_DB: add background noise
    codec: tuple[float, float, float] = (0.0, 0.5, 1.0)  # --codec P,MIN_LEVEL,MAX_LEVEL: lossy round trip (1 = lowest bitrate)
    time_mask: tuple[float, float, float] = (0.5, 10, 1)  # --time-mask P,MAX_FRAMES,COUNT: zero runs of frames
    freq_mask: tuple[float, float, float] = (0.5, 2, 1)  # --freq-mask P,MAX_COEFFS,COUNT: zero bands of coefficients
    noise_dir: str | None = None  # --noise-dir: a folder or a manifest (its _silence_ rows); default _background_noise_/
    rooms: str = DEFAULT_ROOMS  # --rooms: room model for --reverb (shoebox needs pyroomacoustics)
    codecs: str = DEFAULT_CODECS  # --codecs: the codecs --codec draws from

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(f.default, tuple):
                continue
            if len(value) != len(f.default):
                raise SettingError(f.name, f"takes {len(f.default)} numbers (probability, range...), got {value}")
            object.__setattr__(self, f.name, tuple(float(v) for v in value))
        try:
            self._transforms(16000, torch.zeros(1), seed=0)  # each transform checks its own ranges
        except SettingError:
            raise
        except ValueError as e:  # the transform's class names the field
            raise SettingError(_field_of(e), str(e)) from None

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"augment preset must be one of {AUGMENT_PRESETS}, got {name!r}")
        return _PRESETS[name]

    @classmethod
    def probability_fields(cls) -> list[str]:
        """The fields that are (probability, range...) tuples: one `--flag P,...` each."""
        return [f.name for f in fields(cls) if isinstance(f.default, tuple)]

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

    def build(self, *, sample_rate: int, noise: torch.Tensor | None = None, seed: int = 0) -> Augmentation:
        """The transforms this config switches on (p > 0); noise is the 1-D background for `noise`.

        A room impulse response bank is made here, from seed, so its cost falls before the first epoch.
        """
        wave, feature = self._transforms(sample_rate, noise, seed=seed)
        wave = [t for t in wave if t.p > 0]
        for transform in wave:
            if isinstance(transform, RoomReverb):
                transform.bank()
        return Augmentation(Compose(wave), Compose([t for t in feature if t.p > 0]))

    def _transforms(self, sample_rate: int, noise: torch.Tensor | None, *, seed: int):
        # The order a recording happens in: the talker's voice, the timing, the room, the
        # microphone and line, the level, the background, the codec.
        if self.rooms not in ROOM_MODELS:
            raise ValueError(f"rooms must be one of {ROOM_MODELS}, got {self.rooms!r}")
        wave = [
            PlaySpeed(*self.speed),
            PitchShift(*self.pitch),
            VocalTractWarp(*self.vtlp, sample_rate=sample_rate),
            TimeShift(self.time_shift[0], round(self.time_shift[1] * sample_rate)),
            ZeroPad(self.zero_pad[0], round(self.zero_pad[1] * sample_rate)),
            RoomReverb(*self.reverb, model=self.rooms, sample_rate=sample_rate, seed=seed),
            Equalizer(*self.eq, sample_rate=sample_rate),
            BandLimit(*self.band_limit, sample_rate=sample_rate),
            Telephone(*self.telephone, sample_rate=sample_rate),
            Amplify(*self.amplify),
        ]
        if noise is not None:
            wave.append(BackgroundNoise(noise, *self.noise))
        wave.append(CodecRoundTrip(*self.codec, codecs=_codec_names(self.codecs), sample_rate=sample_rate))
        feature = [
            TimeMask(self.time_mask[0], _whole(self.time_mask[1], "TimeMask"), _whole(self.time_mask[2], "TimeMask")),
            FreqMask(self.freq_mask[0], _whole(self.freq_mask[1], "FreqMask"), _whole(self.freq_mask[2], "FreqMask")),
        ]
        return wave, feature


def _whole(value: float, transform: str) -> int:
    if value != int(value):
        raise ValueError(f"{transform}: frame and coefficient counts must be whole numbers, got {value}")
    return int(value)


def _codec_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or any(name not in CODECS for name in names):
        raise ValueError(f"codecs must be a comma-separated list of {', '.join(CODECS)}, got {text!r}")
    return names


def _field_of(error: ValueError) -> str:
    """The config field whose transform raised error (transforms name themselves first: 'PitchShift: ...')."""
    first = str(error).split(":", 1)[0].split()[0]
    return _TRANSFORM_FIELD.get(first, first if first in ("rooms", "codecs") else "augment")


_TRANSFORM_FIELD = {
    "TimeShift": "time_shift", "ZeroPad": "zero_pad", "Amplify": "amplify", "PlaySpeed": "speed", "PitchShift": "pitch",
    "VocalTractWarp": "vtlp", "RoomReverb": "reverb", "Equalizer": "eq", "BandLimit": "band_limit", "Telephone": "telephone",
    "BackgroundNoise": "noise", "CodecRoundTrip": "codec", "TimeMask": "time_mask", "FreqMask": "freq_mask",
}
# Every transform off, at the ranges a flag such as `--augment none --amplify 1` then uses.
_NONE = AugmentConfig(**{name: (0.0, *value[1:]) for name, value in AugmentConfig().to_dict().items() if isinstance(value, tuple)})
_NONE = replace(_NONE, amplify=(0.0, -6, 6))
_PRESETS = {
    "none": _NONE,
    "light": replace(_NONE, time_shift=(0.5, 0.1), amplify=(0.5, -6, 6), noise=(0.3, 10, 30)),
    "standard": AugmentConfig(),
    "strong": replace(
        _NONE,
        time_shift=(0.7, 0.15),
        zero_pad=(0.5, 0.3),
        amplify=(0.7, -15, 6),
        speed=(0.7, 0.8, 1.25),
        noise=(0.8, 0, 20),
        time_mask=(0.8, 12, 2),
        freq_mask=(0.8, 2, 2),
    ),
}
# `standard` plus what makes a TTS clip sound like a person at a microphone. Measured on real
# speech (docs/training.md, "What each transform buys"): the talker (pitch, VTLP) and the microphone (EQ,
# band limits) together were the best combination, 1-2 points over standard; rooms, real noise
# at 0..20 dB and codecs cost points on a small corpus, so they are left to their flags.
_PRESETS["realistic"] = AugmentConfig(
    **{
        **_PRESETS["standard"].to_dict(),
        "pitch": (0.3, -3, 3),
        "vtlp": (0.5, 0.9, 1.1),
        "eq": (0.5, 6),
        "band_limit": (0.4, 50, 400, 3000, 8000),
        "telephone": (0.05,),
    }
)
