"""One source of truth for defaults: `kwsbatch train` with no flags trains what train() with default configs trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import run_main

from kwsbatch.cli import build_parser, settings_from
from kwsbatch.label.config import LabelConfig, LabelRequest
from kwsbatch.model.config import ArchitectureConfig, FeatureConfig, ModelConfig
from kwsbatch.tools.config import BenchConfig
from kwsbatch.train.augment import AugmentConfig
from kwsbatch.train.config import TrainConfig
from kwsbatch.train.loop import default_augmentation, train

TRAIN_CONFIGS = (TrainConfig, ArchitectureConfig, FeatureConfig)


def stored_settings(path) -> dict:
    raw = torch.load(path, weights_only=True)
    provenance = raw["provenance"]
    return {
        "model_config": raw["model_config"],
        "feature_config": raw["feature_config"],
        "augment_config": provenance["augment_config"],
        "train_config": provenance["train_config"],
    }


def test_the_cli_and_the_library_train_the_same_model_by_default(speech_corpus, tmp_path):
    # One epoch, and the test voices for validation (a tenth of nine voices may hold none out).
    train_csv, val_csv = speech_corpus / "train.csv", speech_corpus / "test.csv"
    run_main("train", train_csv, "--val", val_csv, "--epochs", "1", "-o", tmp_path / "cli", "-q", check=True)
    train(train_csv, tmp_path / "lib", config=TrainConfig(epochs=1), val_manifest=val_csv)
    by_cli, by_library = stored_settings(tmp_path / "cli" / "last.pt"), stored_settings(tmp_path / "lib" / "last.pt")
    assert by_cli == by_library
    # ... and that is the bundled recipe: mean pooling over a convolution, clip mean normalisation,
    # the standard augmentation (without noise: this corpus has no _background_noise_ folder).
    assert by_cli["model_config"] == ModelConfig(n_classes=4, n_features=12).to_dict()
    assert (by_cli["model_config"]["pooling"], by_cli["model_config"]["conv_channels"]) == ("mean", 64)
    assert by_cli["feature_config"]["clip_norm"] == "mean"
    standard = AugmentConfig.preset("standard")
    assert by_cli["augment_config"] == dataclasses.replace(standard, noise=(0.0, *standard.noise[1:])).to_dict()


def test_the_default_augmentation_keeps_noise_when_there_is_some(tmp_path):
    (tmp_path / "_background_noise_").mkdir()
    assert default_augmentation(tmp_path / "train.csv") == AugmentConfig() == AugmentConfig.preset("standard")
    assert default_augmentation(tmp_path / "nowhere" / "train.csv").noise[0] == 0.0


@pytest.mark.parametrize("config_class", TRAIN_CONFIGS)
def test_every_train_flag_defaults_to_its_config_field(config_class):
    parser = build_parser("train")
    args = parser.parse_args(["train", "m.csv"])
    flagged = [f for f in dataclasses.fields(config_class) if "help" in f.metadata]
    assert flagged, config_class
    for f in flagged:
        assert getattr(args, f.name) == f.default, f.name
    assert settings_from(args, config_class) == config_class()


def test_every_setting_of_a_train_config_has_a_flag():
    dests = {a.dest for a in subparser("train")._actions}
    for config_class in TRAIN_CONFIGS:
        for f in dataclasses.fields(config_class):
            assert ("help" in f.metadata) <= (f.name in dests), f"{config_class.__name__}.{f.name} has no flag"


def subparser(command: str):
    return build_parser(command)._subparsers._group_actions[0].choices[command]


@pytest.mark.parametrize(
    "command, config_class",
    [("label", LabelConfig), ("label", LabelRequest), ("evaluate", LabelConfig), ("bench", BenchConfig), ("bench", LabelConfig)],
)
def test_every_flag_of_a_config_defaults_to_its_field(command, config_class):
    defaults = {a.dest: a.default for a in subparser(command)._actions}
    checked = [f for f in dataclasses.fields(config_class) if f.name in defaults and f.default is not dataclasses.MISSING]
    assert checked
    for f in checked:
        assert defaults[f.name] == f.default, f"{command} --{f.name}"


def test_a_label_request_from_no_flags_is_the_default_request():
    args = build_parser("label").parse_args(["label", "clips"])
    request = settings_from(args, LabelRequest, inputs=("clips",), config=settings_from(args, LabelConfig))
    assert request == LabelRequest(inputs=("clips",))


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--epochs", "-1"), "argument --epochs: must be at least 1, got -1"),
        (("--batch-size", "0"), "argument --batch-size: must be at least 1, got 0"),
        (("--val-fraction", "1"), "argument --val-fraction: must be below 1, got 1"),
        (("--lr", "-0.1"), "argument --lr: must be at least 0, got -0.1"),
        (("--jobs", "-2"), "argument -j/--jobs: must be at least 0, got -2"),
        (("--conv-stride", "0"), "argument --conv-stride: must be at least 1, got 0"),
        (("--n-mfcc", "50"), "argument --n-mfcc: 50 cannot exceed n_mels (40)"),
        (("--epochs", "many"), "argument --epochs: invalid int value: 'many'"),
    ],
)
def test_out_of_range_settings_are_usage_errors_naming_the_flag(flags, message, capsys):
    from kwsbatch.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "m.csv", *flags])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"kwsbatch train: error: {message}"
