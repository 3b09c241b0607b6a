"""Temperature scaling: one number that makes a model's confidences mean what they say.

Dividing the logits by a temperature T changes no prediction, only how sure each one claims to be.
T is fitted on the validation clips by minimising their cross-entropy; the negative
log-likelihood is convex in 1/T, so a golden-section search on 1/T finds the optimum without
gradients or a learning rate. T is bounded to [0.5, 10]: a validation set the model gets
entirely right would otherwise drive T towards 0 and every probability towards 1.
"""

from __future__ import annotations

import math

import torch

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 10.0


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
    from kwsbatch.metrics import expected_calibration_error

    probs = torch.softmax(logits.detach().double().cpu() / temperature, dim=1)
    confidence, predicted = probs.max(1)
    return expected_calibration_error(confidence.numpy(), (predicted == targets.cpu()).numpy())
