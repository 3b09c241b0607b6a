"""resample.py: exact kernels where they are small, the nearest small one elsewhere, bounded either way."""

import numpy as np
import pytest
import torchaudio
from conftest import tone

from kwsbatch.files.resample import KERNEL_BUDGET, MAX_SAMPLE_RATE, Resampler, kernel_size, resampling_rate


@pytest.mark.parametrize("rate", [1, 117, 8000, 11025, 22050, 44100, 48000, 88200, 192000, 44056, 8001])
def test_kernel_size_is_the_size_of_torchaudios_kernel(rate):
    if kernel_size(rate, 16000) > 4 * KERNEL_BUDGET:
        pytest.skip("too big to build here: that is the point")
    assert kernel_size(rate, 16000) == torchaudio.transforms.Resample(rate, 16000).kernel.numel()


@pytest.mark.parametrize("rate", [1, 51, 100, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000, 352800, 384000, 768000])
def test_common_rates_are_resampled_exactly(rate):
    assert resampling_rate(rate, 16000) == rate


@pytest.mark.parametrize("rate, used", [(16001, 16000), (44056, 44050), (7999, 8000), (53, 52), (767999, 768000)])
def test_other_rates_use_the_nearest_rate_whose_kernel_fits(rate, used):
    assert resampling_rate(rate, 16000) == used
    assert kernel_size(used, 16000) <= KERNEL_BUDGET < kernel_size(rate, 16000)


def test_the_approximation_stays_within_the_documented_error():
    rng = np.random.default_rng(0)
    for rate in rng.integers(1, MAX_SAMPLE_RATE + 1, 300):
        used = resampling_rate(int(rate), 16000)
        limit = 0.001 if rate >= 8000 else 0.0025 if rate >= 1000 else 0.019
        assert abs(used - rate) / rate <= limit, rate


@pytest.mark.parametrize("rate", [0, MAX_SAMPLE_RATE + 1, 2**31 - 1])
def test_rates_outside_the_range_are_refused(rate):
    with pytest.raises(ValueError, match="outside 1-768,000 Hz"):
        resampling_rate(rate, 16000)


def test_a_16001_hz_clip_keeps_its_tone_within_the_speed_error():
    out = Resampler(16000)(tone(1000, 1.0, rate=16001), 16001).numpy()
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert abs(np.fft.rfftfreq(len(out), 1 / 16000)[spectrum.argmax()] - 1000) <= 1  # 0.006% of 1 kHz
    assert len(out) == 16001  # read as 16,000 Hz: 16,001 samples play 1.00006 s

