"""features.py: frame counts, padding that cannot leak into a clip's frames, batch invariance, statistics."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import NOTEBOOK
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwsbatch.files.loader import pad_waveforms
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.features import FeatureStats, MfccFrontend
from kwsbatch.model.scorer import Scorer
from kwsbatch.model.spotter import KeywordSpotter

RATE = 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of tiny forward passes: one thread is as fast, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech(speech_corpus) -> list[np.ndarray]:
    """The corpus's espeak-ng clips as float32 arrays at 16 kHz."""
    return [sf.read(p, dtype="float32")[0] for p in sorted(speech_corpus.glob("*/*.wav"))]


@pytest.fixture(scope="module")
def random_clips(speech) -> list[torch.Tensor]:
    """64 clips of random lengths 0.3-3 s: speech words run together, with a little noise."""
    rng = np.random.default_rng(7)
    clips = []
    for _ in range(64):
        n = int(rng.uniform(0.3, 3.0) * RATE)
        words = np.concatenate([speech[i] for i in rng.integers(len(speech), size=3)])
        clip = words[:n] + 0.01 * rng.standard_normal(n).astype(np.float32)
        clips.append(torch.from_numpy(clip.astype(np.float32)))
    return clips


def random_spotter(seed: int, **model) -> KeywordSpotter:
    torch.manual_seed(seed)
    spotter = KeywordSpotter(FeatureConfig(clip_norm="none"), ModelConfig(**(NOTEBOOK | dict(n_classes=4, hidden=24, layers=2) | model))).eval()
    # Normalisation as if trained: means and spreads of real MFCCs are far from 0 and 1.
    spotter.frontend.set_normalization(torch.linspace(-20, 5, 12), torch.linspace(0.5, 8, 12))
    return spotter


@pytest.mark.parametrize(
    "n, frames",
    [(1, 1), (399, 1), (400, 1), (559, 1), (560, 2), (719, 2), (720, 3), (16000, 98), (16001, 98), (48000, 298)],
)
def test_frame_count_is_one_plus_whole_hops_after_the_first_window(n, frames):
    assert FeatureConfig(clip_norm="none").frame_count(torch.tensor([n])).tolist() == [frames]


def test_frame_count_follows_the_configured_window_and_hop():
    config = FeatureConfig(n_fft=512, hop_length=128)
    assert config.frame_count(torch.tensor([512, 639, 640, 16000])).tolist() == [1, 1, 2, 122]


@pytest.mark.parametrize("n", [400, 401, 560, 4321, 16000, 16001])
def test_a_lone_clip_gets_exactly_frame_count_frames(n):
    wave = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32))
    frontend = MfccFrontend(FeatureConfig(clip_norm="none"))
    features, frame_lengths = frontend.raw(wave[None], torch.tensor([n]))
    assert features.shape == (1, int(frame_lengths[0]), 12)
    assert int(frame_lengths[0]) == 1 + (n - 400) // 160


def test_pad_waveforms_zero_pads_and_pads_short_clips_to_one_window():
    batch, lengths = pad_waveforms([torch.ones(3), torch.full((6,), 2.0)], min_samples=4)
    assert lengths.tolist() == [4, 6]
    assert batch.tolist() == [[1, 1, 1, 0, 0, 0], [2, 2, 2, 2, 2, 2]]


@pytest.mark.parametrize("n", [400, 401, 559, 560, 8000, 16037])
def test_whatever_follows_a_clip_cannot_change_its_frames(speech, n):
    """Zeros, noise or a loud tone after a clip's end: its valid frames stay as computed alone."""
    clip = torch.from_numpy(np.concatenate(speech[:2])[:n])
    pad = 3000
    rng = np.random.default_rng(0)
    after = [
        torch.zeros(pad),
        torch.from_numpy(rng.standard_normal(pad).astype(np.float32)),
        torch.from_numpy(0.9 * np.sin(np.arange(pad) * 0.3).astype(np.float32)),
    ]
    batch = torch.stack([torch.cat([clip, a]) for a in after])
    frontend = MfccFrontend(FeatureConfig(clip_norm="none"))
    features, frame_lengths = frontend.raw(batch, torch.full((3,), n))
    alone, alone_lengths = frontend.raw(clip[None], torch.tensor([n]))
    valid = 1 + (n - 400) // 160
    assert frame_lengths.tolist() == [valid] * 3 and alone_lengths.tolist() == [valid]
    assert alone.shape[1] == valid
    for row in (1, 2):
        assert torch.equal(features[row, :valid], features[0, :valid])
    # Alone, a one-frame clip takes another matrix kernel: equal up to float32 rounding, a few ulp
    # of the largest coefficient (the DCT spreads c0's rounding over the small coefficients).
    assert (features[0, :valid] - alone[0]).abs().max() <= 1e-6 * alone.abs().max()
    # Frames past the clip do see what follows it: the lengths are what keep it out.
    assert not torch.allclose(features[0, -1], features[2, -1], atol=1e-3)


def test_scorer_probabilities_are_batch_invariant(trained_model, random_clips):
    scorer = Scorer(load_checkpoint(trained_model), device="cpu")
    together = scorer.probabilities(random_clips)
    alone = np.concatenate([scorer.probabilities([clip]) for clip in random_clips])
    assert together.shape == (64, 4)
    np.testing.assert_allclose(together.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    # In reverse order each clip lands beside different neighbours and padding.
    np.testing.assert_allclose(scorer.probabilities(random_clips[::-1])[::-1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "model", [dict(pooling="last"), dict(pooling="mean"), dict(pooling="last", bidirectional=True)], ids=["last", "mean", "bi"]
)
def test_keyword_spotter_is_batch_invariant(random_clips, model):
    spotter = random_spotter(0, **model)
    batch, lengths = pad_waveforms(random_clips, min_samples=400)
    with torch.no_grad():
        together = torch.softmax(spotter(batch, lengths), dim=1)
        alone = torch.cat([torch.softmax(spotter(clip[None], torch.tensor([len(clip)])), dim=1) for clip in random_clips])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


@st.composite
def clip_batches(draw):
    lengths = draw(st.lists(st.one_of(st.integers(1, 399), st.integers(400, 48000)), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return [torch.from_numpy((0.3 * rng.standard_normal(n)).astype(np.float32)) for n in lengths]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clips=clip_batches())
def test_batch_invariance_holds_for_any_lengths(clips):
    spotter = random_spotter(1, pooling="last")
    batch, lengths = pad_waveforms(clips, min_samples=400)
    with torch.no_grad():
        together = spotter(batch, lengths)
        alone = torch.cat([spotter(*pad_waveforms([clip], min_samples=400)) for clip in clips])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("settings_", [{}, {"n_mfcc": 20, "n_mels": 64, "n_fft": 512, "hop_length": 128}])
def test_mfcc_computes_what_torchaudios_mfcc_transform_does(speech, settings_):
    frontend = MfccFrontend(FeatureConfig(clip_norm="none", **settings_))
    # 24 clips: more than the CPU computes together, so the blocks are stitched back in order.
    clips = [gain * torch.from_numpy(s) for gain in (1.0, 0.5, 0.25) for s in speech[:8]]
    batch, lengths = pad_waveforms(clips, min_samples=512)
    expected = frontend.mfcc(batch).transpose(1, 2)  # torchaudio's own
    features, _ = frontend.raw(batch, lengths)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-4)


def test_feature_stats_count_only_valid_frames():
    rng = np.random.default_rng(3)
    features = torch.from_numpy(rng.normal(4.0, 2.0, size=(4, 30, 12)))
    frame_lengths = torch.tensor([30, 1, 17, 9])
    for row, n in enumerate(frame_lengths.tolist()):
        features[row, n:] = 1e6  # padding frames: would swamp the statistics if counted
    stats = FeatureStats(12)
    stats.update(features[:2].float(), frame_lengths[:2])
    stats.update(features[2:].float(), frame_lengths[2:])
    valid = np.concatenate([features[row, :n].float().double().numpy() for row, n in enumerate(frame_lengths.tolist())])
    assert stats.count == 57 == len(valid)
    mean, std = stats.mean_std()
    np.testing.assert_allclose(mean.numpy(), valid.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), valid.std(0), rtol=1e-5)


def test_feature_stats_need_frames():
    with pytest.raises(ValueError, match="no frames"):
        FeatureStats(12).mean_std()


def test_normalisation_uses_the_stored_mean_and_std_with_a_floor(speech):
    frontend = MfccFrontend(FeatureConfig(clip_norm="none"))
    wave = torch.from_numpy(speech[0])[None]
    raw, _ = frontend.raw(wave, torch.tensor([16000]))
    mean, std = torch.linspace(-3, 3, 12), torch.linspace(0, 2, 12)  # std 0 is floored at 1e-5
    frontend.set_normalization(mean, std)
    normalised, frame_lengths = frontend(wave, torch.tensor([16000]))
    assert frame_lengths.tolist() == [98]
    torch.testing.assert_close(normalised, (raw - mean) / torch.clamp(std, min=1e-5))


@pytest.mark.parametrize("settings_", [dict(n_mfcc=41, n_mels=40), dict(f_max=9000.0), dict(f_min=8000.0, f_max=7600.0)])
def test_impossible_feature_settings_are_refused(settings_):
    with pytest.raises(ValueError):
        FeatureConfig(**settings_)
