"""model.py: the packed LSTM reads each clip at its own length, whatever the padding holds."""

import pytest
import torch
from conftest import NOTEBOOK

from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.spotter import KeywordLSTM, KeywordSpotter

# Unsorted on purpose (packing sorts internally and must hand rows back in this order); 1 is the
# shortest a clip can be, 40 fills the batch.
LENGTHS = torch.tensor([17, 40, 1, 33, 5])
CONFIGS = {
    "last": dict(pooling="last"),
    "mean": dict(pooling="mean"),
    "last-bi": dict(pooling="last", bidirectional=True),
    "mean-bi": dict(pooling="mean", bidirectional=True),
    "max": dict(pooling="max"),
    "max-bi": dict(pooling="max", bidirectional=True),
    "last-1layer": dict(pooling="last", layers=1),
}


def make_head(**settings) -> KeywordLSTM:
    torch.manual_seed(0)
    config = NOTEBOOK | dict(n_classes=4, n_features=12, hidden=16, layers=2) | settings
    return KeywordLSTM(ModelConfig(**config)).eval()


def padded_features(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(LENGTHS), int(LENGTHS.max()), 12, generator=generator)


def reference_logits(head: KeywordLSTM, sequence: torch.Tensor) -> torch.Tensor:
    """The head's own LSTM on one unpadded (frames, n_features) sequence, pooled by hand."""
    outputs, _ = head.lstm(sequence[None])  # (1, frames, directions * hidden), no packing
    hidden = head.config.hidden
    if head.config.pooling == "mean":
        pooled = outputs[0].mean(0)
    elif head.config.pooling == "max":
        pooled = outputs[0].amax(0)
    elif head.config.bidirectional:
        # Forward direction ends at the last frame; backward direction ends at the first.
        pooled = torch.cat([outputs[0, -1, :hidden], outputs[0, 0, hidden:]])
    else:
        pooled = outputs[0, -1]
    return head.classifier(pooled)


@pytest.mark.parametrize("order", ["as given", "longest first"])  # packing with and without its own sort
@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
def test_each_row_equals_the_lstm_run_on_that_sequence_alone(settings, order):
    head = make_head(**settings)
    lengths, features = LENGTHS, padded_features()
    if order == "longest first":
        rows = torch.argsort(LENGTHS, descending=True)
        lengths, features = LENGTHS[rows], features[rows]
    with torch.no_grad():
        logits = head(features, lengths)
        expected = torch.stack([reference_logits(head, features[i, :n]) for i, n in enumerate(lengths.tolist())])
    assert logits.shape == (5, 4)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
def test_garbage_after_each_length_leaves_the_logits_unchanged(settings):
    head = make_head(**settings)
    features = padded_features()
    garbage = features.clone()
    for i, n in enumerate(LENGTHS.tolist()):
        garbage[i, n:] = 1e3 * torch.randn(garbage.shape[1] - n, 12) + 50
    with torch.no_grad():
        clean_logits, garbage_logits = head(features, LENGTHS), head(garbage, LENGTHS)
    assert torch.equal(clean_logits, garbage_logits)
    # ...while the same change inside the valid steps does change them: the test can see a leak.
    garbage[0, LENGTHS[0] - 1] += 5.0
    with torch.no_grad():
        assert not torch.allclose(head(garbage, LENGTHS)[0], clean_logits[0])


def test_extra_padding_frames_change_nothing():
    head = make_head(pooling="mean")
    features = padded_features()
    wider = torch.cat([features, torch.full((5, 25, 12), -7.0)], dim=1)
    with torch.no_grad():
        assert torch.equal(head(features, LENGTHS), head(wider, LENGTHS))


def test_spotter_maps_waveforms_to_one_logit_row_per_clip():
    torch.manual_seed(0)
    spotter = KeywordSpotter(FeatureConfig(clip_norm="none"), ModelConfig(**NOTEBOOK, n_classes=3, hidden=8, layers=1)).eval()
    waves = torch.randn(4, 16000)
    with torch.no_grad():
        logits = spotter(waves, torch.tensor([16000, 400, 8000, 1200]))
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "settings",
    [dict(n_classes=1), dict(n_classes=4, hidden=0), dict(n_classes=4, layers=0), dict(n_classes=4, pooling="attention")],
)
def test_impossible_model_settings_are_refused(settings):
    with pytest.raises(ValueError):
        ModelConfig(**settings)


def test_spotter_refuses_a_feature_count_the_front_end_does_not_make():
    with pytest.raises(ValueError, match="expects 13 features"):
        KeywordSpotter(FeatureConfig(n_mfcc=12), ModelConfig(n_classes=2, n_features=13))
