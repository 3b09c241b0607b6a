"""Resampling to the model's rate, in bounded memory whatever rate a file's header claims.

torchaudio's windowed-sinc kernel for a rate pair has (new / gcd) rows of about (orig / gcd) taps:
76,000 values for 44.1 kHz -> 16 kHz, but 256 million (2 GB, 4.5 GB while torchaudio builds it in
float64) for 16,001 Hz, and more than memory holds for a rate like 2^31-1. A kernel is used as is
when it has at most KERNEL_BUDGET values: every common rate (8, 11.025, 22.05, 32, 44.1, 48, 88.2,
96, 192 kHz...) and every rate up to 51 Hz. Any other rate is resampled as if it were the nearest
rate whose kernel fits, which plays the clip that much faster or slower: at most 0.1% from 8 kHz
up, 0.25% from 1 kHz up, 1.9% below (53 Hz is read as 52 Hz); 16,001 Hz is read as 16,000 Hz
(0.006%). The duration and rate in output rows stay the file's own. Rates outside
MIN_SAMPLE_RATE..MAX_SAMPLE_RATE are refused when the file is opened (audio.py).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

KERNEL_BUDGET = 1 << 20  # values in one kernel: 4 MiB as float32
MIN_SAMPLE_RATE = 1
MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record at
_LOWPASS_WIDTH, _ROLLOFF = 6, 0.99  # torchaudio's defaults, which kernel_size mirrors
_RESAMPLE_BLOCKS = 4096


def kernel_size(orig_rate: int, new_rate: int) -> int:
    """Values in torchaudio's kernel for orig_rate -> new_rate: (new / gcd) x (orig / gcd + 2 * width)."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return new * (orig + 2 * width)


@functools.lru_cache(maxsize=4096)
def resampling_rate(sample_rate: int, target_rate: int) -> int:
    """The rate a file at sample_rate is resampled from: its own, or the nearest whose kernel fits the budget.

    For a 16 kHz target, the nearest fitting rate is at most 62 Hz away for every rate in
    MIN_SAMPLE_RATE..MAX_SAMPLE_RATE (computed for each), so the search is short.
    """
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE:,} Hz")
    if kernel_size(sample_rate, target_rate) <= KERNEL_BUDGET:
        return sample_rate
    for distance in itertools.count(1):
        for rate in (sample_rate - distance, sample_rate + distance):
            if rate >= 1 and kernel_size(rate, target_rate) <= KERNEL_BUDGET:
                return rate


class Resampler:
    """Resamples to one target rate with torchaudio's windowed-sinc kernels, one per source rate.

    torchaudio applies a kernel as a strided convolution, and oneDNN, torch's CPU convolution,
    compiles a kernel for every new input length: nearly every clip has one, so resampling a
    1 s 44.1 kHz clip took 2.3 ms. The same sums as a matrix product over strided views of the
    clip take 0.14 ms and agree with torchaudio to float32 rounding (1e-4 on unit-variance noise).
    """

    def __init__(self, target_rate: int):
        self.target_rate = target_rate

    def __call__(self, samples: np.ndarray, sample_rate: int):
        """(n_samples,) float32 at sample_rate -> (n_resampled,) float32 torch tensor at target_rate."""
        import torch

        wave = torch.from_numpy(samples)
        rate = resampling_rate(sample_rate, self.target_rate)
        if rate == self.target_rate:
            return wave
        step, block, width, kernel = _kernel(rate, self.target_rate)
        # Every `step` input samples make `block` output samples: block k is the kernel applied
        # to the input from sample k * step - width on.
        padded = torch.nn.functional.pad(wave[None], (width, width + step))[0]
        frames = padded.unfold(0, kernel.shape[0], step)  # (blocks, taps), a view
        # The product copies its rows of the view; a few thousand at a time keeps that copy small
        # when taps overlap a lot (48 kHz: 41 taps every 3 samples), whatever the file's length.
        with torch.no_grad():
            out = torch.cat([rows @ kernel for rows in frames.split(_RESAMPLE_BLOCKS)]).reshape(-1)
        return out[: -(-len(wave) * block // step)]  # ceil(n * block / step), as torchaudio


# Kernels are kept per process, shared by its threads (lru_cache is thread-safe): at most 16 of
# KERNEL_BUDGET values each, 64 MiB, however many rates a corpus holds.
@functools.lru_cache(maxsize=16)
def _kernel(sample_rate: int, target_rate: int) -> tuple:
    import torchaudio

    transform = torchaudio.transforms.Resample(sample_rate, target_rate)
    gcd = math.gcd(sample_rate, target_rate)
    # transform.kernel: (new, 1, taps), one row per output phase; here (taps, new).
    kernel = transform.kernel[:, 0, :].T.contiguous()
    return sample_rate // gcd, target_rate // gcd, transform.width, kernel
