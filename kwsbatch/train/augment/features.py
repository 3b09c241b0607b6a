"""Feature transforms: SpecAugment-style masks over (batch, frames, n_features) MFCCs."""

from __future__ import annotations

import torch

from kwsbatch.train.augment.base import FeatureTransform, integers, on_device


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
        width = integers(n * self.count, self.max_frames, generator).view(n, self.count)
        width = torch.minimum(width, lengths[:, None]) * applied[:, None]
        start = torch.floor(torch.rand(n, self.count, generator=generator) * (lengths[:, None] - width + 1)).long()
        return {"start": start, "width": width}

    def apply(self, features, frame_lengths, *, start, width):
        start, width = on_device(start, features), on_device(width, features)
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
        width = integers(n * self.count, self.max_bins, generator).view(n, self.count) * applied[:, None]
        # Start as a fraction of the room left, so the band always fits whatever n_features is.
        start = torch.rand(n, self.count, generator=generator)
        return {"start": start, "width": width}

    def apply(self, features, frame_lengths, *, start, width):
        n_features = features.shape[2]
        width = width.clamp(max=n_features)
        first = torch.floor(start * (n_features - width + 1)).long()
        first, width = on_device(first, features), on_device(width, features)
        f = torch.arange(n_features, device=features.device)[None, None, :]
        masked = ((f >= first[:, :, None]) & (f < (first + width)[:, :, None])).any(1)
        return features.masked_fill(masked[:, None, :], 0.0), frame_lengths
