"""The model's settings: how clips become features (FeatureConfig) and the network's shape (ArchitectureConfig,
ModelConfig). No torch here, so that `kwsbatch train --help` can show their defaults at once; features.py and
spotter.py build the modules from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from kwsbatch.settings import SettingError, check_settings, setting

if TYPE_CHECKING:
    import torch

CLIP_NORMS = ("none", "mean", "meanvar")
DEFAULT_F_MAX = 7600.0  # Hz: above it 16 kHz speech carries little
POOLINGS = ("last", "mean", "max")


@dataclass(frozen=True)
class FeatureConfig:
    """How clips become MFCC frames; the fields with help text are `kwsbatch train` flags."""

    sample_rate: int = setting(16000, "clips are resampled to this rate (Hz) before anything else", at_least=1)
    n_mfcc: int = setting(12, "MFCC coefficients per frame", at_least=1)
    n_mels: int = setting(40, "mel bands the coefficients are computed from", at_least=1)
    n_fft: int = 400  # 25 ms analysis window at 16 kHz
    hop_length: int = 160  # 10 ms between frames
    f_min: float = 20.0
    f_max: float | None = None  # None: 7600 Hz, or half the sample rate when that is lower
    # Per-clip normalisation over the clip's own valid frames, before the training-set statistics:
    # "mean" subtracts each coefficient's mean (cepstral mean normalisation: removes the channel's
    # colouring and the recording level); "meanvar" also divides by its standard deviation.
    clip_norm: str = setting("mean", "normalise each clip's coefficients over its own frames (none: the notebook's)", choices=CLIP_NORMS)

    def __post_init__(self):
        check_settings(self)
        if self.f_max is None:
            object.__setattr__(self, "f_max", min(DEFAULT_F_MAX, self.sample_rate / 2))
        if self.n_mfcc > self.n_mels:
            raise SettingError("n_mfcc", f"{self.n_mfcc} cannot exceed n_mels ({self.n_mels})")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise SettingError("f_max", f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")

    def to_dict(self) -> dict:
        return asdict(self)

    def frame_count(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Frames whose window lies inside a clip of n_samples (clips are padded to >= n_fft first)."""
        return 1 + (n_samples.clamp(min=self.n_fft) - self.n_fft).div(self.hop_length, rounding_mode="floor")


@dataclass(frozen=True)
class ArchitectureConfig:
    """The model's shape, less what the data decides (classes, features); fields match `kwsbatch train`'s flags."""

    hidden: int = setting(128, "LSTM units per layer", at_least=1)
    layers: int = setting(2, "stacked LSTM layers", at_least=1)
    dropout: float = setting(0.0, "dropout between LSTM layers, training only", at_least=0, at_most=1)
    bidirectional: bool = setting(False, "run the LSTM both ways (no longer causal)")
    # "last": the final hidden state at each clip's true length (the notebook's); "mean": the mean over valid
    # steps; "max": each unit's largest output over valid steps.
    pooling: str = setting("mean", "how the LSTM's states become one vector: the mean or the max over valid frames, or the last one",
                           choices=POOLINGS)
    # A causal convolution over frames before the LSTM; 0: none (the notebook's).
    conv_channels: int = setting(64, "channels of a causal convolution before the LSTM (0: none)", at_least=0)
    conv_kernel: int = setting(5, "frames each convolution output sees (itself and the ones before it)", at_least=1)
    conv_stride: int = setting(3, "frames between convolution outputs: the LSTM runs this many times fewer steps", at_least=1)

    def __post_init__(self):
        check_settings(self)

    def for_data(self, n_classes: int, n_features: int) -> ModelConfig:
        """The full model config for a data set's classes and a front end's coefficients."""
        return ModelConfig(**asdict(self), n_classes=n_classes, n_features=n_features)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ArchitectureConfig):
    """An architecture for given data: what a checkpoint stores to rebuild its model."""

    n_classes: int
    n_features: int = FeatureConfig.n_mfcc  # must equal the feature config's n_mfcc

    def __post_init__(self):
        super().__post_init__()
        if self.n_classes < 2:
            raise SettingError("n_classes", f"must be at least 2, got {self.n_classes}")

    def to_dict(self) -> dict:
        config = asdict(self)
        return {"n_classes": config.pop("n_classes"), "n_features": config.pop("n_features"), **config}
