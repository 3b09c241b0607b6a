"""Model options that must not break batch invariance: the causal conv front end, per-clip normalisation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import NOTEBOOK

from kwsbatch.files.loader import pad_waveforms
from kwsbatch.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.features import MfccFrontend
from kwsbatch.model.spotter import CausalConv, KeywordSpotter


def clips(n: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """n clips of 0.3-3 s: noise bursts under a tone, at different levels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4800, 48000, (1,), generator=g))
        t = torch.arange(length) / 16000
        freq = float(torch.empty(1).uniform_(200, 2000, generator=g))
        wave = 0.3 * torch.sin(2 * torch.pi * freq * t) + 0.05 * torch.randn(length, generator=g)
        out.append(wave * float(torch.empty(1).uniform_(0.05, 1.0, generator=g)))
    return out


def spotter(seed: int = 0, *, clip_norm: str = "none", **model) -> KeywordSpotter:
    torch.manual_seed(seed)
    features = FeatureConfig(clip_norm=clip_norm)
    return KeywordSpotter(features, ModelConfig(**(NOTEBOOK | dict(n_classes=5, hidden=16, layers=2) | model))).eval()


@pytest.mark.parametrize(
    "clip_norm, model",
    [
        ("none", dict(conv_channels=8)),
        ("none", dict(conv_channels=8, conv_kernel=3, conv_stride=3, pooling="mean")),
        ("mean", dict(pooling="mean")),
        ("meanvar", dict(conv_channels=8, pooling="last")),
    ],
)
def test_a_clips_logits_do_not_depend_on_its_batch(clip_norm, model):
    net = spotter(clip_norm=clip_norm, **model)
    waves = clips()
    with torch.inference_mode():
        batch, lengths = pad_waveforms(waves, min_samples=400)
        together = net(batch, lengths)
        for i, wave in enumerate(waves):
            alone = net(*pad_waveforms([wave], min_samples=400))
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)


def test_causal_conv_never_reads_past_a_clips_last_frame():
    torch.manual_seed(0)
    conv = CausalConv(4, 6, kernel=5, stride=2)
    frame_lengths = torch.tensor([9, 1, 4, 10])
    features = torch.randn(4, 10, 4)
    poisoned = features.clone()
    for row, n in enumerate(frame_lengths.tolist()):
        poisoned[row, n:] = 1e6
    out, out_lengths = conv(features, frame_lengths)
    out_poisoned, _ = conv(poisoned, frame_lengths)
    assert out_lengths.tolist() == [5, 1, 2, 5]
    for row, n in enumerate(out_lengths.tolist()):
        assert torch.equal(out[row, :n], out_poisoned[row, :n])


@pytest.mark.parametrize("clip_norm", ["mean", "meanvar"])
def test_clip_norm_uses_only_each_clips_own_frames(clip_norm):
    frontend = MfccFrontend(FeatureConfig(clip_norm=clip_norm))
    waves = clips(6, seed=1)
    batch, lengths = pad_waveforms(waves, min_samples=400)
    features, frame_lengths = frontend.raw(batch, lengths)
    for row, n in enumerate(frame_lengths.tolist()):
        valid = features[row, :n]
        torch.testing.assert_close(valid.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
        if clip_norm == "meanvar":
            assert ((valid.std(0, unbiased=False) - 1).abs() < 0.01).all()


def test_invalid_model_and_feature_settings_are_refused():
    with pytest.raises(ValueError, match="conv"):
        ModelConfig(n_classes=3, conv_stride=0)
    with pytest.raises(ValueError, match="clip_norm"):
        FeatureConfig(clip_norm="cepstral")


def test_checkpoints_saved_before_conv_and_clip_norm_existed_still_load(tmp_path):
    net = spotter(conv_stride=2)  # a model of then: no conv, and the conv settings' values of then
    checkpoint = Checkpoint(("a", "b", "c", "d", "e"), net.frontend.config, net.head.config, net.state_dict())
    raw = checkpoint.to_dict()
    for key in ("conv_channels", "conv_kernel", "conv_stride"):
        del raw["model_config"][key]
    del raw["feature_config"]["clip_norm"]
    torch.save(raw, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.model_config == net.head.config and loaded.feature_config.clip_norm == "none"
    waves = clips(3)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.build()(*pad_waveforms(waves, min_samples=400)), net(*pad_waveforms(waves, min_samples=400)))


def test_a_conv_model_round_trips_through_its_checkpoint(tmp_path):
    net = spotter(conv_channels=8, clip_norm="mean")
    save_checkpoint(Checkpoint(tuple("abcde"), net.frontend.config, net.head.config, net.state_dict(), temperature=1.7), tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert dataclasses.asdict(loaded.model_config)["conv_channels"] == 8 and loaded.temperature == 1.7
    waves = clips(3)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.build()(*pad_waveforms(waves, min_samples=400)), net(*pad_waveforms(waves, min_samples=400)))


TRAINING_PATHS = {
    "last": dict(pooling="last"),
    "mean-conv": dict(pooling="mean", conv_channels=8),
    "max-conv": dict(pooling="max", conv_channels=8),
    "last-bi": dict(pooling="last", bidirectional=True),
    "mean-bi-conv": dict(pooling="mean", bidirectional=True, conv_channels=8),
    "max-bi-3layers": dict(pooling="max", bidirectional=True, layers=3),
}


@pytest.mark.parametrize("model", TRAINING_PATHS.values(), ids=TRAINING_PATHS.keys())
def test_training_forward_over_padding_matches_the_packed_inference_forward(model):
    # Training runs the LSTM over the padded batch (fast backward; a two-way one reads each clip
    # reversed within its length); inference packs it. Same logits, same gradients.
    net = spotter(**model)
    batch, lengths = pad_waveforms(clips(16, seed=2), min_samples=400)
    assert len(set(lengths.tolist())) > 8  # the padding differs from clip to clip
    targets = torch.arange(16) % 5
    results = []
    for mode in (net.eval, net.train):
        mode()
        net.zero_grad()
        logits = net(batch, lengths)
        torch.nn.functional.cross_entropy(logits, targets).backward()
        results.append((logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    (packed, packed_grads), (unpacked, unpacked_grads) = results
    torch.testing.assert_close(unpacked, packed, atol=1e-5, rtol=0)
    assert packed_grads.keys() == unpacked_grads.keys()
    for name, grad in packed_grads.items():
        assert grad.abs().max() > 0, name  # every layer learns through both paths
        torch.testing.assert_close(unpacked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_two_way_model_trained_over_padding_drops_out_between_layers_only_in_training():
    net = spotter(bidirectional=True, layers=2, dropout=0.5, pooling="mean").train()
    batch, lengths = pad_waveforms(clips(4, seed=3), min_samples=400)
    torch.manual_seed(1)
    first = net(batch, lengths)
    torch.manual_seed(1)
    assert torch.equal(net(batch, lengths), first)  # seeded draws, the same model
    assert not torch.allclose(net(batch, lengths), first)  # other draws, other units dropped
    net.eval()
    assert torch.equal(net(batch, lengths), net(batch, lengths))
