"""What every transform shares: drawing per-clip parameters, the probability, Compose, and helpers."""

from __future__ import annotations

import math

import torch

from kwsbatch.model.device import to_device


class Augmentation:
    """The waveform stage and the feature stage of one configuration."""

    def __init__(self, waveform: "Compose", features: "Compose"):
        self.waveform = waveform
        self.features = features

    def __bool__(self) -> bool:
        return bool(self.waveform.transforms or self.features.transforms)

    def featurize(self, frontend, waves: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator):
        """(batch, samples) waves + (batch,) lengths -> augmented (features, frame_lengths): the waveform
        stage, frontend, then the feature stage, in the one order every training path uses."""
        waves, lengths = self.waveform(waves, lengths, generator)
        return self.features(*frontend(waves, lengths), generator)

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
        """batch on any device, lengths on the host: the parameters are drawn, and new lengths worked
        out, on the host, and only copies of them go to the device, so on a GPU the host never waits
        for the device (CodecRoundTrip, whose encoders run on the host, is the one exception)."""
        lengths = lengths.cpu()
        return self.apply(batch, lengths, **self.randomize_parameters(lengths, generator))

    def _applied(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator) < self.p

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({args})"


class WaveTransform(_Transform):
    """(batch, samples) + (batch,) host lengths -> the same, zero past each clip's new length.

    apply(batch, lengths, **params) gets the parameters on the host, as drawn, and moves what it
    computes with to the batch's device itself (`on_device`).
    """


class FeatureTransform(_Transform):
    """(batch, frames, n_features) + (batch,) host frame lengths -> the same shapes and lengths."""


def on_device(tensor: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """A host tensor (parameters, lengths) on batch's device, queued behind its work, not waiting for it."""
    return to_device(tensor, batch.device)


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform in log(value), so a factor range like 0.8..1.25 goes down as often as up."""
    return torch.exp(uniform(n, math.log(low), math.log(high), generator))


def integers(n: int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [0, high] (inclusive), per clip when high is a tensor."""
    return torch.floor(torch.rand(n, generator=generator) * (torch.as_tensor(high) + 1)).long()


def valid(width: int, lengths: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """(batch, width) mask, on batch's device, of the samples (or frames) inside each clip of (batch,) host lengths."""
    return torch.arange(width, device=batch.device) < on_device(lengths, batch)[:, None]


def on_rows(batch: torch.Tensor, chosen: torch.Tensor, change) -> torch.Tensor:
    """batch with change((k, samples) rows) -> (k, samples) applied to the rows of the (batch,) host mask chosen only.

    The costly transforms run on the clips their probability picked, not on the whole batch. The
    rows are chosen on the host and gathered by index: a boolean mask on a GPU would make the
    host wait to learn how many rows it picked.
    """
    rows = chosen.nonzero().flatten()
    if not len(rows):
        return batch
    rows = on_device(rows, batch)
    return batch.index_copy(0, rows, change(batch.index_select(0, rows)))


def check_range(name: str, low: float, high: float, lowest: float, highest: float, what: str) -> None:
    """ValueError unless lowest <= low <= high <= highest, naming the transform and the settings."""
    if not lowest <= low <= high <= highest:
        raise ValueError(f"{name}: need {lowest:g} <= min_{what} <= max_{what} <= {highest:g}, got {low}, {high}")
