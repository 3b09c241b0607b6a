"""Batched augmentation: exact effects with given parameters, ranges, seeds, and zero padding kept zero."""

from __future__ import annotations

import math

import pytest
import torch

from kwsbatch.train.augment import (
    AUGMENT_PRESETS,
    Amplify,
    AugmentConfig,
    BackgroundNoise,
    BandLimit,
    CodecRoundTrip,
    Compose,
    Equalizer,
    FreqMask,
    PitchShift,
    PlaySpeed,
    RoomReverb,
    Telephone,
    TimeMask,
    TimeShift,
    VocalTractWarp,
    ZeroPad,
    load_noise,
)
from kwsbatch.train.augment import waveform
from kwsbatch.train.augment.base import log_uniform


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips of the given lengths, zero-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for row, n in enumerate(lengths):
        batch[row, :n] = torch.randn(n, generator=g) * 0.1 + 0.05
    return batch, torch.tensor(lengths)


def wave_transforms(p: float = 1.0) -> list:
    noise = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    return [
        TimeShift(p, 300),
        ZeroPad(p, 500),
        Amplify(p, -12, 12),
        PlaySpeed(p, 0.7, 1.4),
        BackgroundNoise(noise, p, 0, 20),
        PitchShift(p, -4, 4),
        VocalTractWarp(p, 0.85, 1.15),
        RoomReverb(p, 0.1, 0.3, model="exponential", n_rirs=4),
        Equalizer(p, 10),
        BandLimit(p),
        Telephone(p / 2),  # it draws nothing else: only which clips differ from seed to seed
        CodecRoundTrip(p, 0.5, 1.0, codecs=("mulaw", "vorbis")),
    ]


def test_time_shift_moves_content_and_cuts_what_leaves_the_clip():
    batch = torch.arange(1, 9, dtype=torch.float32).repeat(2, 1)
    batch[1, 6:] = 0
    out, lengths = TimeShift(1.0, 3).apply(batch, torch.tensor([8, 6]), shift=torch.tensor([2, -3]))
    assert lengths.tolist() == [8, 6]
    assert out[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    assert out[1].tolist() == [4, 5, 6, 0, 0, 0, 0, 0]


def test_zero_pad_adds_silence_at_both_ends_and_lengthens_the_clip():
    batch = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    out, lengths = ZeroPad(1.0, 3).apply(batch, torch.tensor([3, 4]), before=torch.tensor([2, 0]), after=torch.tensor([1, 0]))
    assert lengths.tolist() == [6, 4]
    assert out.tolist() == [[0, 0, 1, 2, 3, 0], [1, 2, 3, 4, 0, 0]]


def test_amplify_applies_the_gain_in_decibels():
    batch, lengths = padded_batch([100, 60])
    gain_db = 20 * math.log10(2.0)
    params = Amplify(1.0, gain_db, gain_db).randomize_parameters(lengths, torch.Generator().manual_seed(0))
    out, _ = Amplify(1.0).apply(batch, lengths, **params)
    torch.testing.assert_close(out, batch * 2, rtol=1e-6, atol=0)


def test_play_speed_resamples_by_linear_interpolation():
    ramp = torch.arange(10, dtype=torch.float32)[None].repeat(3, 1)
    out, lengths = PlaySpeed(1.0, 0.5, 2.0).apply(ramp, torch.tensor([10, 10, 9]), rate=torch.tensor([2.0, 0.5, 1.0]))
    assert lengths.tolist() == [5, 19, 9]
    assert out[0, :5].tolist() == [0, 2, 4, 6, 8]
    assert out[1, :19].tolist() == [i / 2 for i in range(19)]
    assert out[2, :9].tolist() == list(range(9))
    assert out[0, 5:].abs().sum() == 0 and out[2, 9:].abs().sum() == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_cpus_per_clip_moves_and_stretches_equal_the_devices_batched_ones(seed):
    # The CPU copies clip by clip, a GPU gathers the whole batch: the same samples either way.
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 400, (9,), generator=g)
    lengths[0] = 400
    batch, lengths = padded_batch(lengths.tolist(), seed)
    before, after = torch.randint(0, 150, (2, 9), generator=g)
    shift = torch.randint(-500, 500, (9,), generator=g)
    for offsets, new_lengths in ((shift, lengths), (before, lengths + before + after)):
        width = int(new_lengths.max())
        moved = waveform._move_rows(batch, lengths, offsets, new_lengths, width)
        assert torch.equal(moved, waveform._move_gathered(batch, lengths, offsets, new_lengths, width))
    rate = torch.where(torch.rand(9, generator=g) < 0.5, log_uniform(9, 0.5, 2.0, g), 1.0)
    new_lengths = PlaySpeed(1.0, 0.5, 2.0).apply(batch, lengths, rate=rate)[1]
    width = int(new_lengths.max())
    stretched = waveform._stretch_rows(batch, lengths, rate, new_lengths, width)
    assert torch.equal(stretched, waveform._stretch_batched(batch, lengths, rate, new_lengths, width))


def test_background_noise_is_added_at_the_drawn_snr():
    batch, lengths = padded_batch([4000, 2500, 3000])
    noise = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    transform = BackgroundNoise(noise, 1.0, 12.0, 12.0)
    out, _ = transform(batch, lengths, torch.Generator().manual_seed(0))
    for row, n in enumerate(lengths.tolist()):
        signal, added = batch[row, :n], (out - batch)[row, :n]
        snr = 10 * math.log10(signal.pow(2).mean() / added.pow(2).mean())
        assert snr == pytest.approx(12.0, abs=1e-3)


def test_background_noise_leaves_a_silent_clip_silent():
    batch = torch.zeros(2, 1000)
    out, _ = BackgroundNoise(torch.ones(5000), 1.0, 0, 10)(batch, torch.tensor([1000, 700]), torch.Generator().manual_seed(0))
    assert out.abs().max() == 0


@pytest.mark.parametrize("transform", wave_transforms(), ids=lambda t: type(t).__name__)
def test_wave_transforms_keep_samples_past_each_clip_at_zero(transform):
    batch, lengths = padded_batch([1600, 400, 3200, 2000, 401])
    out, new_lengths = transform(batch, lengths, torch.Generator().manual_seed(7))
    assert out.shape[0] == 5 and out.shape[1] >= int(new_lengths.max())
    past = torch.arange(out.shape[1]) >= new_lengths[:, None]
    assert out[past].abs().max() == 0
    assert (new_lengths > 0).all()


@pytest.mark.parametrize("transform", wave_transforms(), ids=lambda t: type(t).__name__)
def test_same_generator_seed_gives_the_same_batch(transform):
    batch, lengths = padded_batch([1600, 900, 1200])
    first = transform(batch, lengths, torch.Generator().manual_seed(5))
    second = transform(batch, lengths, torch.Generator().manual_seed(5))
    other = transform(batch, lengths, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape != other[0].shape or not torch.equal(first[0], other[0])


@pytest.mark.parametrize("transform", wave_transforms(p=0.0), ids=lambda t: type(t).__name__)
def test_probability_zero_changes_nothing(transform):
    batch, lengths = padded_batch([1600, 900, 1200])
    out, new_lengths = transform(batch, lengths, torch.Generator().manual_seed(5))
    assert torch.equal(new_lengths, lengths)
    assert torch.equal(out[:, : batch.shape[1]], batch)


def test_probability_is_per_clip():
    batch, lengths = padded_batch([200] * 2000)
    out, _ = Amplify(0.3, 6, 6)(batch, lengths, torch.Generator().manual_seed(0))
    changed = (out != batch).any(1).float().mean().item()
    assert 0.25 < changed < 0.35


def test_draws_do_not_depend_on_the_outcome_of_earlier_transforms():
    # Each transform draws a fixed count per batch, so a run's random stream stays aligned
    # whatever the probabilities are: what follows a p=0 transform sees the same draws.
    batch, lengths = padded_batch([800, 500])
    after_off = Compose([TimeShift(0.0, 100), Amplify(1.0, -6, 6)])(batch, lengths, torch.Generator().manual_seed(1))
    after_on = Compose([TimeShift(1.0, 0), Amplify(1.0, -6, 6)])(batch, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(after_off[0], after_on[0])


def test_time_mask_zeroes_runs_inside_each_clips_frames():
    features = torch.ones(4, 50, 12)
    frame_lengths = torch.tensor([50, 20, 3, 35])
    out, lengths = TimeMask(1.0, 8, 2)(features, frame_lengths, torch.Generator().manual_seed(0))
    assert torch.equal(lengths, frame_lengths)
    masked = (out == 0).all(2)  # whole frames
    assert ((out == 0) == masked[:, :, None]).all()
    for row, n in enumerate(frame_lengths.tolist()):
        assert not masked[row, n:].any()
        assert masked[row].sum() <= 16
    assert masked.any()


def test_freq_mask_zeroes_bands_of_coefficients_over_the_whole_clip():
    features = torch.ones(6, 30, 12)
    out, _ = FreqMask(1.0, 3, 1)(features, torch.full((6,), 30), torch.Generator().manual_seed(0))
    masked = (out == 0).all(1)  # whole coefficients
    assert ((out == 0) == masked[:, None, :]).all()
    widths = masked.sum(1)
    assert widths.max() <= 3 and widths.max() > 0
    for row in range(6):  # one contiguous band
        idx = masked[row].nonzero().flatten()
        assert len(idx) == 0 or idx.tolist() == list(range(idx[0], idx[0] + len(idx)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: TimeShift(1.5, 10),
        lambda: TimeShift(0.5, -1),
        lambda: ZeroPad(-0.1, 10),
        lambda: Amplify(0.5, 6, -6),
        lambda: PlaySpeed(0.5, 1.2, 1.1),
        lambda: PlaySpeed(0.5, 0.0, 1.1),
        lambda: BackgroundNoise(torch.zeros(10), 0.5, 30, 10),
        lambda: BackgroundNoise(torch.zeros(2, 10), 0.5, 0, 10),
        lambda: TimeMask(0.5, -1, 1),
        lambda: FreqMask(0.5, 2, 0),
    ],
)
def test_out_of_range_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_config_checks_every_transforms_range_even_when_switched_off():
    with pytest.raises(ValueError, match="PlaySpeed"):
        AugmentConfig(speed=(0.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="takes 3 numbers"):
        AugmentConfig(amplify=(0.5, 1.0))
    with pytest.raises(ValueError, match="whole numbers"):
        AugmentConfig(time_mask=(0.5, 2.5, 1))


def test_presets_build_what_they_switch_on_with_a_readable_repr():
    assert set(AUGMENT_PRESETS) == {"none", "light", "standard", "strong", "realistic"}
    assert not AugmentConfig.preset("none").build(sample_rate=16000, noise=torch.ones(100))
    standard = AugmentConfig.preset("standard").build(sample_rate=16000, noise=torch.ones(16000))
    assert repr(standard) == (
        "Augmentation(waveform=Compose([PlaySpeed(p=0.5, min_rate=0.9, max_rate=1.1), TimeShift(p=0.5, max_samples=1600), "
        "ZeroPad(p=0.3, max_samples=3200), Amplify(p=0.5, min_gain_db=-10.0, max_gain_db=6.0), "
        "BackgroundNoise(p=0.5, min_snr_db=5.0, max_snr_db=25.0, noise_samples=16000)]), "
        "features=Compose([TimeMask(p=0.5, max_frames=10, count=1), FreqMask(p=0.5, max_bins=2, count=1)]))"
    )
    without_noise = AugmentConfig.preset("standard").build(sample_rate=16000, noise=None)
    assert "BackgroundNoise" not in repr(without_noise)
    with pytest.raises(ValueError, match="preset"):
        AugmentConfig.preset("extreme")


def test_load_noise_scales_each_file_to_unit_rms(tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", 0.01 * np.ones(8000, dtype=np.float32), 8000)
    sf.write(tmp_path / "b.flac", 0.5 * np.sin(np.arange(16000) / 5).astype(np.float32), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(100, dtype=np.float32), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    noise, files = load_noise(tmp_path, 16000)
    assert files == ["a.wav", "b.flac"]
    assert len(noise) == 32000
    assert noise[:16000].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-3)
    assert noise[16000:].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-3)


def test_realistic_preset_adds_the_recording_chain_to_standard():
    realistic = AugmentConfig.preset("realistic")
    standard = AugmentConfig.preset("standard")
    added = {name for name in AugmentConfig.probability_fields() if getattr(realistic, name) != getattr(standard, name)}
    assert added == {"pitch", "vtlp", "eq", "band_limit", "telephone"}
    everything = {**realistic.to_dict(), "rooms": "exponential", "reverb": (0.3, 0.2, 0.5), "codec": (0.1, 0.5, 1.0)}
    built = AugmentConfig(**everything).build(sample_rate=16000, noise=torch.ones(100), seed=1)
    names = [type(t).__name__ for t in built.waveform.transforms]
    assert names == [  # the order a recording happens in
        "PlaySpeed", "PitchShift", "VocalTractWarp", "TimeShift", "ZeroPad", "RoomReverb", "Equalizer", "BandLimit", "Telephone",
        "Amplify", "BackgroundNoise", "CodecRoundTrip",
    ]
    assert "RoomReverb(p=0.3, min_rt60=0.2, max_rt60=0.5, model='exponential', n_rirs=32, sample_rate=16000, seed=1)" in repr(built)


def test_background_noise_snr_is_triangular_over_its_range():
    draws = BackgroundNoise(torch.ones(100), 1.0, 0, 20).randomize_parameters(torch.full((20000,), 100), torch.Generator().manual_seed(0))
    snr_db = -20 * torch.log10(draws["level"])
    assert snr_db.min() >= 0 and snr_db.max() <= 20
    assert ((snr_db > 5) & (snr_db < 15)).float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert (snr_db < 2).float().mean().item() == pytest.approx(0.02, abs=0.01)


def test_load_noise_from_a_manifest_takes_its_silence_rows_only(tmp_path):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for name, seconds in (("room.wav", 1.0), ("street.flac", 0.5), ("yes.wav", 0.7)):
        sf.write(tmp_path / name, (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    (tmp_path / "train.csv").write_text("path,label\nroom.wav,_silence_\nyes.wav,yes\nstreet.flac,_silence_\n")
    noise, files = load_noise(tmp_path / "train.csv", 16000)
    assert files == ["room.wav", "street.flac"]
    assert len(noise) == 24000
    assert noise[:16000].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-3)


# Every transform that runs on the model's device, each on for about half the clips or all of them.
ON_DEVICE = AugmentConfig(
    time_shift=(0.5, 0.1), zero_pad=(0.5, 0.2), amplify=(0.5, -10, 6), speed=(0.5, 0.9, 1.1), pitch=(0.5, -3, 3),
    vtlp=(0.5, 0.9, 1.1), reverb=(0.5, 0.2, 0.6), eq=(0.5, 6), band_limit=(0.5, 50, 400, 3000, 8000), telephone=(0.5,),
    noise=(0.5, 5, 25), codec=(0.0, 0.5, 1.0), time_mask=(0.5, 10, 1), freq_mask=(0.5, 2, 1), rooms="exponential",
)


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_an_augmented_training_step_never_reads_the_device_back(p):
    # A meta tensor has a shape and a device but no values: reading one on the host (.item(), a
    # boolean mask, a max for a width, torch.istft's window check) raises, as mixing it with a host
    # tensor does. A step that runs on it is one that on a GPU never makes the host wait for the
    # device: the draws and the lengths stay on the host, and only copies go to the device.
    from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
    from kwsbatch.model.spotter import KeywordSpotter
    from kwsbatch.train.batches import Prepared
    from kwsbatch.train.loop import _train_logits

    config = AugmentConfig(**{k: (p, *v[1:]) if isinstance(v, tuple) and v[0] else v for k, v in ON_DEVICE.to_dict().items()})
    augmentation = config.build(sample_rate=16000, noise=torch.randn(20000, generator=torch.Generator().manual_seed(1)))
    assert len(augmentation.waveform.transforms) == 11 and len(augmentation.features.transforms) == 2  # all but the codec's
    checkpoint = load_checkpoint(default_model_path())
    spotter = KeywordSpotter(checkpoint.feature_config, checkpoint.model_config).to("meta").train()
    lengths = torch.tensor([16000, 12000, 8000, 400, 0, 16000])
    waves = torch.zeros(len(lengths), 16000, device="meta")
    for seed in range(3):
        logits = _train_logits(spotter, Prepared((waves, lengths), False), augmentation, torch.Generator().manual_seed(seed), waves.device)
        assert logits.shape == (len(lengths), len(checkpoint.classes)) and logits.device.type == "meta"
        torch.nn.functional.cross_entropy(logits, torch.zeros(len(lengths), dtype=torch.long, device="meta")).backward()


def test_transforms_take_host_lengths_and_give_host_lengths():
    batch, lengths = padded_batch([900, 700, 0, 300])
    config = AugmentConfig(**{k: (1.0, *v[1:]) if isinstance(v, tuple) and v[0] else v for k, v in ON_DEVICE.to_dict().items()})
    augmentation = config.build(sample_rate=16000, noise=torch.randn(5000, generator=torch.Generator().manual_seed(1)))
    out, new_lengths = augmentation.waveform(batch, lengths, torch.Generator().manual_seed(0))
    assert new_lengths.device.type == "cpu" and out.shape == (4, int(new_lengths.max()))
    assert not torch.equal(new_lengths, lengths)  # padding, speed and rooms change them
    assert out[2].abs().sum() == 0 and all(out[i, n:].abs().sum() == 0 for i, n in enumerate(new_lengths.tolist()))
