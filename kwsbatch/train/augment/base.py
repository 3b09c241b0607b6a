"""What every transform shares: drawing per-clip parameters, the probability, Compose, and helpers."""

from __future__ import annotations

import math

import torch


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
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({args})"


class WaveTransform(_Transform):
    """(batch, samples) + (batch,) lengths -> the same, zero past each clip's new length."""


class FeatureTransform(_Transform):
    """(batch, frames, n_features) + (batch,) frame lengths -> the same shapes and lengths."""


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform in log(value), so a factor range like 0.8..1.25 goes down as often as up."""
    return torch.exp(uniform(n, math.log(low), math.log(high), generator))


def integers(n: int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [0, high] (inclusive), per clip when high is a tensor."""
    return torch.floor(torch.rand(n, generator=generator) * (torch.as_tensor(high) + 1)).long()


def valid(width: int, lengths: torch.Tensor) -> torch.Tensor:
    """(batch, width) mask of the samples (or frames) inside each clip."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def on_rows(batch: torch.Tensor, chosen: torch.Tensor, change) -> torch.Tensor:
    """batch with change((k, samples) rows) -> (k, samples) applied to the chosen (batch,) rows only.

    The costly transforms run on the clips their probability picked, not on the whole batch.
    """
    if not bool(chosen.any()):
        return batch
    out = batch.clone()
    out[chosen] = change(batch[chosen])
    return out


def check_range(name: str, low: float, high: float, lowest: float, highest: float, what: str) -> None:
    """ValueError unless lowest <= low <= high <= highest, naming the transform and the settings."""
    if not lowest <= low <= high <= highest:
        raise ValueError(f"{name}: need {lowest:g} <= min_{what} <= max_{what} <= {highest:g}, got {low}, {high}")
