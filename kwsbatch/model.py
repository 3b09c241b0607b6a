"""The keyword classifier: a packed LSTM over MFCC frames, and the spotter that feeds it waveforms.

No I/O here: checkpoint.py saves and rebuilds these modules from their configs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kwsbatch.features import FeatureConfig, MfccFrontend

POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class ModelConfig:
    n_classes: int
    n_features: int = 12  # must equal the feature config's n_mfcc
    hidden: int = 64  # LSTM units per layer (the notebook's 64)
    layers: int = 3  # stacked LSTM layers (the notebook's 3)
    dropout: float = 0.0  # between LSTM layers, training only
    bidirectional: bool = False
    pooling: str = "last"  # "last": final hidden state at each clip's true length; "mean": mean over valid steps

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.n_classes < 2 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"need n_classes >= 2, hidden >= 1, layers >= 1; got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class KeywordLSTM(nn.Module):
    """(batch, frames, n_features) features + (batch,) frame lengths -> (batch, n_classes) logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            config.n_features,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
            bidirectional=config.bidirectional,
        )
        directions = 2 if config.bidirectional else 1
        self.classifier = nn.Linear(config.hidden * directions, config.n_classes)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        # Packing makes the LSTM stop at each clip's own last frame, so padded steps never
        # reach the hidden state; enforce_sorted=False keeps the batch in its given order.
        packed = pack_padded_sequence(features, frame_lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, _) = self.lstm(packed)
        if self.config.pooling == "last":
            # h_n holds each sequence's state at its true length, already back in input order.
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.config.bidirectional else h_n[-1]
        else:
            padded, lengths = pad_packed_sequence(outputs, batch_first=True)
            lengths = lengths.to(padded.device)
            mask = torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]
            pooled = (padded * mask[:, :, None]).sum(1) / lengths[:, None]
        return self.classifier(pooled)


class KeywordSpotter(nn.Module):
    """Waveforms to logits: MFCC front end, training-set normalisation, then the LSTM."""

    def __init__(self, feature_config: FeatureConfig, model_config: ModelConfig):
        super().__init__()
        if model_config.n_features != feature_config.n_mfcc:
            raise ValueError(f"model expects {model_config.n_features} features, front end makes {feature_config.n_mfcc}")
        self.frontend = MfccFrontend(feature_config)
        self.head = KeywordLSTM(model_config)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at the feature rate + (batch,) sample lengths -> (batch, n_classes) logits."""
        features, frame_lengths = self.frontend(waveforms, lengths)
        return self.head(features, frame_lengths)
