"""Room reverberation: a bank of simulated room impulse responses, convolved with clips on the device.

The bank is made once per training run from the seed: ``n_rirs`` responses whose RT60 is drawn
uniformly in [min_rt60, max_rt60]. Two room models:

- ``shoebox``: pyroomacoustics' image-source method in a random rectangular room (3-8 x 3-6 x
  2.4-3.5 m, wall absorption from Sabine's formula for the drawn RT60), a microphone at least
  0.5 m from the walls and the talker 0.3-2 m from it, as a speaker before a laptop or phone.
  Needs the ``augment`` extra (``pip install 'kwsbatch[augment]'``).
- ``exponential``: a direct impulse plus Gaussian noise decaying at the drawn RT60, with a
  direct-to-reverberant ratio drawn in 0..12 dB; no extra package.

Every response starts at its direct path (sample 0: reverberation never moves a clip's onset),
is cut where its energy decay curve reaches -60 dB, and has unit energy, so white noise keeps its
power and a clip's loudness changes only by the room's colouring. Image-source decays are not
exactly Sabine's; a response whose measured RT60 (Schroeder backward integration, the -5..-25 dB
slope extrapolated to -60 dB) is more than 5% off the drawn value is damped or stretched to it.
A clip grows by its response's tail: a reverberant recording rings on after the word.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch

from kwsbatch.extras import install_command
from kwsbatch.train.augment.base import WaveTransform, check_range, integers, on_device, on_rows, valid
from kwsbatch.train.config import DEFAULT_ROOMS, ROOM_MODELS

DECAY_60DB = 3 * math.log(10)  # amplitude decay exponent over one RT60 (energy falls 60 dB)


def measure_rt60(rir: np.ndarray, sample_rate: int) -> float:
    """RT60 in seconds from the Schroeder energy decay curve: the -5..-25 dB slope (T20) times 3."""
    energy = np.asarray(rir, dtype=np.float64) ** 2
    edc = np.cumsum(energy[::-1])[::-1]
    edc_db = 10 * np.log10(np.maximum(edc / edc[0], 1e-30))
    t5, t25 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    if t25 <= t5:
        return 0.0
    span = np.arange(t5, t25 + 1)
    slope = np.polyfit(span / sample_rate, edc_db[span], 1)[0]  # dB per second, negative
    return float(-60.0 / slope)


class RoomReverb(WaveTransform):
    """Convolve a clip with a room impulse response from the bank, by FFT on the clip's device."""

    def __init__(
        self,
        p: float = 0.5,
        min_rt60: float = 0.2,
        max_rt60: float = 0.7,
        *,
        model: str = DEFAULT_ROOMS,
        n_rirs: int = 32,
        sample_rate: int = 16000,
        seed: int = 0,
    ):
        super().__init__(p)
        check_range("RoomReverb", min_rt60, max_rt60, 0.1, 2.0, "rt60")
        if model not in ROOM_MODELS:
            raise ValueError(f"RoomReverb: room model must be one of {ROOM_MODELS}, got {model!r}")
        if model == "shoebox" and p > 0 and importlib.util.find_spec("pyroomacoustics") is None:
            raise ValueError(
                f"RoomReverb: the shoebox room model needs pyroomacoustics ({install_command('augment')}), or use --rooms exponential"
            )
        if n_rirs < 1:
            raise ValueError(f"RoomReverb: n_rirs must be >= 1, got {n_rirs}")
        self.min_rt60, self.max_rt60, self.model, self.n_rirs = min_rt60, max_rt60, model, n_rirs
        self.sample_rate, self.seed = sample_rate, seed
        self._bank: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def bank(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(n_rirs, max_samples) responses zero-padded, and (n_rirs,) their lengths; made on first use."""
        device = torch.device(device)
        if device not in self._bank:
            if not self._bank:
                self._bank[torch.device("cpu")] = _stack(make_rirs(self.model, self.n_rirs, self._rt60s(), self.sample_rate, self.seed))
            self._bank[device] = tuple(t.to(device) for t in self._bank[torch.device("cpu")])
        return self._bank[device]

    def _rt60s(self) -> np.ndarray:
        return np.random.default_rng(self.seed).uniform(self.min_rt60, self.max_rt60, self.n_rirs)

    def randomize_parameters(self, lengths, generator):
        n = len(lengths)
        applied = self._applied(n, generator)
        index = integers(n, self.n_rirs - 1, generator)
        return {"index": torch.where(applied, index, -1)}

    def apply(self, batch, lengths, *, index):
        """index (batch,): the bank's response for each clip, -1 for none."""
        rirs, _ = self.bank(batch.device)
        _, rir_lengths = self.bank()  # the new lengths are worked out on the host
        chosen = index >= 0
        tails = torch.where(chosen & (lengths > 0), rir_lengths[index.clamp(min=0)] - 1, 0)
        new_lengths = lengths + tails
        width = max(int(new_lengths.max()), batch.shape[1])
        n_fft = 1 << (batch.shape[1] + rirs.shape[1] - 1).bit_length()
        picked = rirs.index_select(0, on_device(index[chosen], batch))

        def convolve(rows):
            spectrum = torch.fft.rfft(rows, n_fft) * torch.fft.rfft(picked.to(rows.dtype), n_fft)
            return torch.fft.irfft(spectrum, n_fft)[:, :width]

        out = on_rows(torch.nn.functional.pad(batch, (0, width - batch.shape[1])), chosen, lambda rows: convolve(rows[:, : batch.shape[1]]))
        return out * valid(width, new_lengths, batch), new_lengths


def make_rirs(model: str, n_rirs: int, rt60s: np.ndarray, sample_rate: int, seed: int) -> list[np.ndarray]:
    """n_rirs responses, the i-th with RT60 rt60s[i], each from the direct path on, unit energy."""
    rng = np.random.default_rng([seed, 0x5EB])
    make = _shoebox_rir if model == "shoebox" else _exponential_rir
    rirs = []
    for rt60 in rt60s:
        rir = _trim(make(float(rt60), sample_rate, rng), sample_rate, float(rt60))
        rirs.append((rir / np.sqrt((rir**2).sum())).astype(np.float32))
    return rirs


def _exponential_rir(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(1.5 * rt60 * sample_rate)
    t = np.arange(1, n) / sample_rate
    tail = rng.standard_normal(n - 1) * np.exp(-DECAY_60DB * t / rt60)
    drr_db = rng.uniform(0.0, 12.0)
    tail *= math.sqrt(10 ** (-drr_db / 10) / (tail**2).sum())
    return np.concatenate([[1.0], tail])


def _shoebox_rir(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    import pyroomacoustics as pra

    while True:
        dims = rng.uniform([3.0, 3.0, 2.4], [8.0, 6.0, 3.5])
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # the room is too large to die away that fast even with bare absorbers
            continue
        mic = rng.uniform(0.5, dims - 0.5)
        direction = rng.normal(size=3)
        source = mic + rng.uniform(0.3, 2.0) * direction / np.linalg.norm(direction)
        if np.all(source > 0.3) and np.all(source < dims - 0.3):
            break
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    # pyroomacoustics delays each arrival by half its fractional-delay filter; start at the direct path.
    direct = int(round(np.linalg.norm(source - mic) / pra.constants.get("c") * sample_rate)) + pra.constants.get("frac_delay_length") // 2
    return rir[direct:]


def _trim(rir: np.ndarray, sample_rate: int, rt60: float) -> np.ndarray:
    """Damp (or stretch) the decay to rt60 when the measured RT60 is off by over 5%, then cut at -60 dB."""
    for _ in range(3):
        measured = measure_rt60(rir, sample_rate)
        if measured <= 0 or abs(measured / rt60 - 1) <= 0.05:
            break
        t = np.arange(len(rir)) / sample_rate
        rir = rir * np.exp(-DECAY_60DB * t * (1 / rt60 - 1 / measured))
    energy = rir**2
    edc = np.cumsum(energy[::-1])[::-1]
    end = int(np.argmax(edc < edc[0] * 1e-6)) or len(rir)
    return rir[:end]


def _stack(rirs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rirs])
    bank = torch.zeros(len(rirs), int(lengths.max()))
    for row, rir in enumerate(rirs):
        bank[row, : len(rir)] = torch.from_numpy(rir)
    return bank, lengths
