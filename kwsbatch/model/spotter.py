"""The keyword classifier: a packed LSTM over MFCC frames, and the spotter that feeds it waveforms.

No I/O here: checkpoint.py saves and rebuilds these modules from their configs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.device import to_device
from kwsbatch.model.features import MfccFrontend


class CausalConv(nn.Module):
    """(batch, frames, n_in) + (batch,) frame lengths -> (batch, ceil(frames / stride), channels) + lengths.

    Each output frame t sees input frames t * stride - kernel + 1 .. t * stride, with zeros (the
    normalised features' mean) before a clip's first frame. Only frames at or before a clip's own
    last frame reach its valid outputs, so the padding after a clip, and so the batch it lands
    in, cannot change them; a clip of n frames gives (n - 1) // stride + 1 outputs.
    """

    def __init__(self, n_in: int, channels: int, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(n_in, channels, kernel, stride=stride)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = nn.functional.pad(features.transpose(1, 2), (self.kernel - 1, 0))
        out = torch.relu(self.conv(x)).transpose(1, 2)
        return out, torch.div(frame_lengths - 1, self.stride, rounding_mode="floor") + 1


class KeywordLSTM(nn.Module):
    """(batch, frames, n_features) features + (batch,) frame lengths -> (batch, n_classes) logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.conv_channels:
            self.conv = CausalConv(config.n_features, config.conv_channels, config.conv_kernel, config.conv_stride)
        self.lstm = nn.LSTM(
            config.conv_channels or config.n_features,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
            bidirectional=config.bidirectional,
        )
        directions = 2 if config.bidirectional else 1
        self.classifier = nn.Linear(config.hidden * directions, config.n_classes)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        if self.config.conv_channels:
            features, frame_lengths = self.conv(features, frame_lengths)
        # On a GPU cuDNN runs a packed two-way LSTM well; on the CPU its backward pass is slow.
        if self.training and (not self.config.bidirectional or features.device.type == "cpu"):
            return self.classifier(self._pool_unpacked(features, frame_lengths))
        # Packing makes the LSTM stop at each clip's own last frame, so padded steps never
        # reach the hidden state. Other orders than the loader's longest-first are sorted and
        # handed back in their order; the sort's index copy to a GPU would wait for the device.
        lengths = frame_lengths.cpu()
        longest_first = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=longest_first)
        outputs, (h_n, _) = self.lstm(packed)
        if self.config.pooling == "last":
            # h_n holds each sequence's state at its true length, already back in input order.
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.config.bidirectional else h_n[-1]
        else:
            padded, _ = pad_packed_sequence(outputs, batch_first=True)
            pooled = pool_steps(self.config.pooling, padded, to_device(lengths, padded.device))
        return self.classifier(pooled)

    def _pool_unpacked(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """The same pooled states as the packed path, from the LSTM run over the whole padded batch.

        Training only: on the CPU, backpropagating through a packed LSTM whose clips differ in
        length costs a full-size gradient buffer per time step (about 10x slower once augmentation
        varies the lengths). A one-way LSTM is causal, so the padding after a clip changes none
        of its outputs up to its last frame, which is all the pooling reads. A two-way LSTM's
        backward direction reads each clip reversed within its own length, padding left after it,
        which makes it causal too (as the exports run it: portable.py).
        """
        lengths = to_device(frame_lengths, features.device)
        if self.config.bidirectional:
            outputs = self._both_ways_over_padding(features, lengths)
        else:
            outputs, _ = self.lstm(features)
        if self.config.pooling == "last":
            return last_states(outputs, lengths, self.config.hidden, self.config.bidirectional)
        return pool_steps(self.config.pooling, outputs, lengths)

    def _both_ways_over_padding(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, frames, n_in) -> (batch, frames, 2 * hidden): the stacked two-way LSTM, layer by layer and
        direction by direction, with its own parameters (and its dropout between layers)."""
        reverse = reversal_index(lengths, features.shape[1])
        zeros = features.new_zeros(1, len(features), self.config.hidden)
        x = features
        for layer in range(self.config.layers):
            if layer:
                x = nn.functional.dropout(x, self.lstm.dropout, self.training)
            directions = []
            for suffix in ("", "_reverse"):
                weights = [getattr(self.lstm, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                steps = gather_steps(x, reverse) if suffix else x
                out, _, _ = torch.lstm(steps, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
                directions.append(gather_steps(out, reverse) if suffix else out)
            x = torch.cat(directions, dim=2)
        return x


def reversal_index(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(batch, frames) index that turns each clip's first lengths[b] frames around and leaves its padding in place.

    Applied twice it is the identity, so the same gather reverses a backward direction's outputs back.
    """
    steps = torch.arange(frames, device=lengths.device)[None, :]
    return torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)


def gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, t], :] for (batch, frames, channels) x and (batch, steps) index."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def last_states(outputs: torch.Tensor, lengths: torch.Tensor, hidden: int, bidirectional: bool) -> torch.Tensor:
    """(batch, steps, directions * hidden) LSTM outputs over padding -> each clip's final states.

    The forward direction ends at the clip's last frame; the backward one at its first, where its run ends.
    """
    last = gather_steps(outputs, (lengths - 1)[:, None]).squeeze(1)
    return torch.cat([last[:, :hidden], outputs[:, 0, hidden:]], dim=1) if bidirectional else last


def pool_steps(pooling: str, padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(batch, steps, hidden) -> (batch, hidden): the mean or the max over each clip's first `lengths` steps."""
    valid = (torch.arange(padded.shape[1], device=padded.device) < lengths[:, None])[:, :, None]
    if pooling == "max":
        return padded.masked_fill(~valid, float("-inf")).amax(1)
    return (padded * valid).sum(1) / lengths[:, None]


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
