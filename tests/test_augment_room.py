"""Room reverberation: the bank's responses, their RT60 by Schroeder integration, energy, alignment, lengths."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
import torch

from kwsbatch.extras import install_command
from kwsbatch.train.augment import RoomReverb

SR = 16000
MODELS = [
    "exponential",
    pytest.param("shoebox", marks=pytest.mark.skipif(importlib.util.find_spec("pyroomacoustics") is None, reason="needs the augment extra")),
]


def schroeder_rt60(rir: np.ndarray, sample_rate: int) -> float:
    """ISO 3382 T20: the energy decay curve's -5..-25 dB least-squares slope, extrapolated to -60 dB."""
    edc = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    db = 10 * np.log10(edc / edc[0])
    fit = (db <= -5) & (db >= -25)
    slope, _ = np.polyfit(np.flatnonzero(fit) / sample_rate, db[fit], 1)
    return -60 / slope


@pytest.fixture(scope="module", params=MODELS)
def reverb(request) -> RoomReverb:
    transform = RoomReverb(1.0, 0.25, 0.6, model=request.param, n_rirs=6, sample_rate=SR, seed=3)
    transform.bank()
    return transform


def test_a_unit_impulse_comes_out_as_the_rooms_response(reverb):
    rirs, rir_lengths = reverb.bank()
    impulse = torch.zeros(2, 4000)
    impulse[:, 0] = 1.0
    out, lengths = reverb.apply(impulse, torch.tensor([4000, 4000]), index=torch.tensor([2, 5]))
    for row, k in enumerate((2, 5)):
        n = int(rir_lengths[k])
        assert lengths[row] == 4000 + n - 1
        torch.testing.assert_close(out[row, :n], rirs[k, :n], atol=2e-6, rtol=0)
        assert out[row, n:].abs().max() < 2e-6


def test_rt60_by_schroeder_integration_is_within_the_configured_range(reverb):
    rirs, rir_lengths = reverb.bank()
    measured = [schroeder_rt60(rirs[k, : rir_lengths[k]].numpy(), SR) for k in range(reverb.n_rirs)]
    assert all(0.25 * 0.95 <= rt60 <= 0.6 * 1.05 for rt60 in measured), measured
    assert max(measured) - min(measured) > 0.1  # drawn across the range, not one room six times


def test_responses_have_unit_energy_so_white_noise_keeps_its_power(reverb):
    rirs, _ = reverb.bank()
    torch.testing.assert_close(rirs.pow(2).sum(1), torch.ones(reverb.n_rirs), rtol=1e-5, atol=0)
    noise = torch.randn(reverb.n_rirs, 3 * SR, generator=torch.Generator().manual_seed(0))
    out, _ = reverb.apply(noise, torch.full((reverb.n_rirs,), 3 * SR), index=torch.arange(reverb.n_rirs))
    ratio = out[:, SR : 2 * SR].pow(2).mean(1) / noise[:, SR : 2 * SR].pow(2).mean(1)  # away from the edges
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


def test_the_onset_stays_where_it_was(reverb):
    # The direct path is the response's first sample: a click is heard when it happened, not later.
    clicks = torch.zeros(reverb.n_rirs, 2000)
    clicks[:, 500] = 1.0
    out, _ = reverb.apply(clicks, torch.full((reverb.n_rirs,), 2000), index=torch.arange(reverb.n_rirs))
    assert out[:, :500].abs().max() < 1e-5
    assert (out.abs().argmax(1) == 500).all()


def test_clips_left_alone_are_unchanged_and_lengths_follow_the_tail(reverb):
    batch = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1))
    batch[1, 600:] = 0
    out, lengths = reverb.apply(batch, torch.tensor([1000, 600, 1000]), index=torch.tensor([-1, 0, -1]))
    assert lengths.tolist() == [1000, 600 + int(reverb.bank()[1][0]) - 1, 1000]
    assert torch.equal(out[0, :1000], batch[0]) and out[0, 1000:].abs().max() == 0


def test_the_bank_is_made_from_the_seed():
    first = RoomReverb(1.0, 0.2, 0.4, model="exponential", n_rirs=3, seed=7).bank()[0]
    again = RoomReverb(1.0, 0.2, 0.4, model="exponential", n_rirs=3, seed=7).bank()[0]
    other = RoomReverb(1.0, 0.2, 0.4, model="exponential", n_rirs=3, seed=8).bank()[0]
    assert torch.equal(first, again)
    assert first.shape != other.shape or not torch.equal(first, other)


def test_shoebox_rooms_without_pyroomacoustics_are_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyroomacoustics", None)  # what find_spec reports for a missing package
    with pytest.raises(ValueError, match=re.escape(f"needs pyroomacoustics ({install_command('augment')}), or use --rooms exponential")):
        RoomReverb(0.5, 0.2, 0.6, model="shoebox")
    assert RoomReverb(0.0, 0.2, 0.6, model="shoebox").p == 0  # switched off, nothing is needed


@pytest.mark.parametrize("make", [lambda: RoomReverb(0.5, 0.6, 0.2), lambda: RoomReverb(0.5, 0.05, 0.2), lambda: RoomReverb(0.5, model="cave")])
def test_bad_room_settings_are_refused(make):
    with pytest.raises(ValueError, match="RoomReverb"):
        make()
