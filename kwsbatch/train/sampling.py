"""Which clips an epoch trains on, and how often: per-clip weights, class balance, a seeded order,
and batches of clips of like length.

A clip's weight is its sampling rate: an epoch draws a clip of weight 4 four times as often as a
clip of weight 1, and has round(sum of the weights) draws. Whole weights are exact (each clip
exactly `weight` times, in a shuffled order); fractional ones round each clip's count up or down
by systematic sampling, so the epoch size stays fixed. With every weight 1 an epoch is a
permutation of the clips, drawn from the generator exactly as before weights existed.
"""

from __future__ import annotations

import torch


def epoch_size(weights: torch.Tensor) -> int:
    """Draws per epoch: the (n_clips,) weights' sum, rounded, at least 1."""
    return max(1, round(float(weights.double().sum())))


def class_totals(targets: torch.Tensor, weights: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes,) float32: each class's expected draws per epoch; 1 for a class with none, so it can divide."""
    totals = torch.zeros(n_classes).index_add_(0, targets, weights.float())
    return torch.where(totals > 0, totals, torch.ones(()))


def epoch_order(targets: torch.Tensor, weights: torch.Tensor, balance: str, shuffle: torch.Generator) -> torch.Tensor:
    """One epoch's clip indices, (epoch_size(weights),) int64, drawn from shuffle.

    balance "sample" draws with replacement, each class equally often and within a class in
    proportion to the clips' weights; otherwise every clip comes its weight's number of times.
    """
    n_classes = int(targets.max()) + 1 if len(targets) else 1
    if balance == "sample":
        rate = weights.float() / class_totals(targets, weights, n_classes)[targets]
        return torch.multinomial(rate, epoch_size(weights), replacement=True, generator=shuffle)
    draws = torch.repeat_interleave(torch.arange(len(weights)), _copies(weights, shuffle))
    return draws[torch.randperm(len(draws), generator=shuffle)]


def group_by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, group_batches: int) -> torch.Tensor:
    """order with each run of group_batches * batch_size draws sorted longest first, so each batch cut
    from it holds clips of like length; group_batches 0 leaves order as drawn.

    A training batch pads its clips to the longest, and the LSTM runs over the padding too: on clips
    of mixed lengths, random batches spend a third or more of the model's time on zeros. The
    epoch's draws stay the same and a group's batches come in the order of their lengths, so
    nothing random is drawn here; clips of one length keep their shuffled order (a stable sort), so
    on a corpus of equal-length clips the order is unchanged. lengths: (n_clips,) samples.
    """
    if not group_batches:
        return order
    groups = torch.split(order, batch_size * group_batches)
    return torch.cat([group[torch.sort(lengths[group], descending=True, stable=True).indices] for group in groups]) if groups else order


def loss_weights(targets: torch.Tensor, weights: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes,) cross-entropy weights for --balance weight: inverse to each class's draws per epoch, mean 1."""
    totals = class_totals(targets, weights, n_classes)
    return totals.sum() / (n_classes * totals)


def _copies(weights: torch.Tensor, shuffle: torch.Generator) -> torch.Tensor:
    """(n_clips,) int64 draws of each clip in one epoch, summing to epoch_size(weights).

    Fractional weights: the clips, in a random order, lie end to end on a line, each as long as
    its weight scaled to the epoch size; one draw falls at a random offset in [0, 1) and every
    whole step after it. A clip of scaled weight w then gets floor(w) or ceil(w) draws, w on average.
    """
    whole = weights.floor()
    if torch.equal(whole, weights):
        return whole.long()  # no randomness used: all-ones keeps the plain permutation's draws
    n = epoch_size(weights)
    scaled = weights.double() * (n / float(weights.double().sum()))
    order = torch.randperm(len(weights), generator=shuffle)
    ends = torch.cumsum(scaled[order], 0)
    offset = torch.rand((), generator=shuffle, dtype=torch.float64)
    draws_up_to = (torch.floor(ends - offset) + 1).clamp(0, n).long()  # draws at or before each clip's end
    copies = torch.empty(len(weights), dtype=torch.long)
    copies[order] = torch.diff(draws_up_to, prepend=torch.zeros(1, dtype=torch.long))
    return copies
