"""Temperature scaling: one number that makes a model's confidences mean what they say.

Dividing the logits by a temperature T changes no prediction, only how sure each one claims to be.
T is fitted on the validation clips by minimising their cross-entropy; the negative
log-likelihood is convex in 1/T, so a golden-section search on 1/T finds the optimum without
gradients or a learning rate. T is bounded to [0.5, 10]: a validation set the model gets
entirely right would otherwise drive T towards 0 and every probability towards 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 10.0
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, steps: int = 60) -> float:
    """The T in [0.5, 10] minimising the mean cross-entropy of softmax(logits / T); logits (n, classes)."""
    if len(logits) == 0:
        return 1.0
    logits, targets = logits.detach().double().cpu(), targets.cpu()

    def nll(inverse: float) -> float:
        return torch.nn.functional.cross_entropy(logits * inverse, targets).item()

    low, high = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    golden = (math.sqrt(5) - 1) / 2
    a, b = high - golden * (high - low), low + golden * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - golden * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + golden * (high - low)
            fb = nll(b)
    return round(1.0 / ((low + high) / 2), 4)


def calibration_error(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Expected calibration error of softmax(logits / temperature), with the evaluate report's bins."""
    probs = torch.softmax(logits.detach().double().cpu() / temperature, dim=1)
    confidence, predicted = probs.max(1)
    return expected_calibration_error(confidence.numpy(), (predicted == targets.cpu()).numpy())


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], *, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error over `n_bins` equal-width confidence bins:
    sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|.

    Bins are (lo, hi] with the first also taking 0.0, as in Guo et al. 2017. 0.0 for no files.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(
            f"confidence {confidence.shape} and correct {correct.shape} must be 1-D, same length"
        )
    if confidence.size == 0:
        return 0.0
    if not np.all((confidence >= 0.0) & (confidence <= 1.0)):
        raise ValueError("confidence values must lie in [0, 1]")
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.digitize(confidence, inner_edges, right=True)
    # |bin| / n * |acc - conf| = |sum(correct) - sum(confidence)| / n within each bin.
    n_correct = np.bincount(bins, weights=correct.astype(float), minlength=n_bins)
    total_confidence = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(n_correct - total_confidence).sum() / confidence.size)
