"""portable.py: the export-friendly modules compute what the packed spotter computes."""

import numpy as np
import pytest
import soundfile as sf
import torch

from kwsbatch.files.loader import pad_waveforms
from kwsbatch.model.checkpoint import Checkpoint, load_checkpoint
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.features import MfccFrontend
from kwsbatch.model.portable import DftMfcc, PaddedLSTM, PortableSpotter, dft_basis
from kwsbatch.model.scorer import Scorer
from kwsbatch.model.spotter import KeywordLSTM, KeywordSpotter

# Frame lengths in no particular order: the longest, one frame, and lengths between.
FRAME_LENGTHS = [50, 1, 17, 33, 2, 49]


def random_lstm(*, bidirectional: bool, pooling: str, n_classes: int = 5, seed: int = 0) -> KeywordLSTM:
    torch.manual_seed(seed)
    head = KeywordLSTM(ModelConfig(n_classes=n_classes, hidden=16, layers=2, bidirectional=bidirectional, pooling=pooling, conv_channels=0))
    with torch.no_grad():
        # Larger weights than the init, so the states saturate less evenly and the logits spread.
        for p in head.lstm.parameters():
            p.mul_(3.0)
        head.classifier.weight.mul_(10.0)
    return head.eval()


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padded_lstm_equals_the_packed_lstm(bidirectional, pooling):
    head = random_lstm(bidirectional=bidirectional, pooling=pooling)
    features = torch.randn(len(FRAME_LENGTHS), max(FRAME_LENGTHS), 12, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor(FRAME_LENGTHS)
    with torch.no_grad():
        packed = head(features, lengths)
        padded = PaddedLSTM(head)(features, lengths)
    assert packed.abs().max() > 1.0  # the comparison is not between near-zero logits
    torch.testing.assert_close(padded, packed, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
def test_padded_lstm_ignores_what_lies_in_the_padding(bidirectional):
    head = PaddedLSTM(random_lstm(bidirectional=bidirectional, pooling="last"))
    features = torch.randn(len(FRAME_LENGTHS), max(FRAME_LENGTHS), 12, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor(FRAME_LENGTHS)
    noisy = features.clone()
    for row, n in enumerate(FRAME_LENGTHS):
        noisy[row, n:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(head(noisy, lengths), head(features, lengths), rtol=0, atol=1e-6)


def test_dft_kernel_gives_torch_stft_power_spectrum():
    n_fft, hop = 400, 160
    window = torch.hann_window(n_fft, dtype=torch.float64)
    signal = torch.randn(16000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    stft = torch.stft(signal, n_fft, hop, window=window, center=False, return_complex=True).abs() ** 2
    spectrum = torch.nn.functional.conv1d(signal[None, None, :], dft_basis(n_fft, window).double(), stride=hop)[0]
    power = spectrum[: n_fft // 2 + 1] ** 2 + spectrum[n_fft // 2 + 1 :] ** 2
    # float32 basis: the power spectrum agrees to float32 precision relative to its scale.
    assert (power - stft).abs().max() / stft.abs().max() < 1e-5


def test_dft_mfcc_equals_the_torchaudio_front_end_on_speech(speech_corpus):
    frontend = MfccFrontend(FeatureConfig(clip_norm="none")).eval()
    waves = [torch.from_numpy(sf.read(speech_corpus / f"{w}/v03.wav", dtype="float32")[0]) for w in ("yes", "no", "up")]
    waves = [waves[0], waves[1][:7000], waves[2][:300]]
    batch, lengths = pad_waveforms(waves, min_samples=400)
    with torch.no_grad():
        expected, expected_lengths = frontend(batch, lengths)
        got, got_lengths = DftMfcc(frontend)(batch, lengths)
    assert torch.equal(got_lengths, expected_lengths)
    frames = expected.shape[1]
    mask = torch.arange(frames) < expected_lengths[:, None]
    # Log-mel energies amplify rounding where the spectrum is near zero; 1e-3 of a coefficient's
    # unit scale (the features are mean/std-normalised: here raw, of size ~10-100) is far below what matters.
    assert (got[:, :frames][mask] - expected[mask]).abs().max() < 1e-3


def test_portable_spotter_equals_kwsbatch_probabilities_on_real_clips(trained_model, speech_corpus):
    checkpoint = load_checkpoint(trained_model)
    waves = [
        torch.from_numpy(sf.read(speech_corpus / path, dtype="float32")[0])[:n]
        for path, n in (("yes/v03.wav", 16000), ("no/v07.wav", 9000), ("up/v11.wav", 4000), ("down/v03.wav", 300))
    ]
    expected = Scorer(checkpoint, device="cpu").probabilities(waves)
    batch, lengths = pad_waveforms(waves, min_samples=1)  # true lengths: the portable model pads short clips itself
    with torch.no_grad():
        got = PortableSpotter(checkpoint)(batch, lengths).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("bidirectional, pooling", [(True, "last"), (True, "mean"), (False, "last")])
def test_portable_spotter_equals_kwsbatch_for_every_head(bidirectional, pooling, speech_corpus):
    """Random weights and a low temperature, so probabilities are sharp and any difference would show."""
    config = ModelConfig(n_classes=4, hidden=16, layers=2, bidirectional=bidirectional, pooling=pooling, conv_channels=0)
    spotter = KeywordSpotter(FeatureConfig(clip_norm="none"), config)
    spotter.head = random_lstm(bidirectional=bidirectional, pooling=pooling, n_classes=4, seed=5)
    spotter.frontend.set_normalization(torch.full((12,), -20.0), torch.full((12,), 15.0))
    checkpoint = Checkpoint(("a", "b", "c", "d"), FeatureConfig(clip_norm="none"), config, spotter.state_dict(), temperature=0.1)
    waves = [torch.from_numpy(sf.read(speech_corpus / f"{w}/v01.wav", dtype="float32")[0]) for w in ("yes", "no", "up")]
    waves = [waves[0][:12000], waves[1], waves[2][:2500]]
    expected = Scorer(checkpoint, device="cpu").probabilities(waves)
    batch, lengths = pad_waveforms(waves, min_samples=1)
    with torch.no_grad():
        got = PortableSpotter(checkpoint)(batch, lengths).numpy()
    assert expected.max() > 0.5  # sharp enough that the comparison means something
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
