"""info.py through `kwsbatch info`: what a checkpoint is, for people and as JSON."""

import json

import pytest
import torch
from conftest import run_main

from kwsbatch import __version__
from kwsbatch.model.checkpoint import load_checkpoint

# The trained_model fixture: 12 MFCCs -> the default causal conv (64 channels, kernel 5) -> 2 LSTM
# layers of 32 units -> 4 classes. The conv has 64 x 12 x 5 weights + 64 biases; per LSTM layer
# 4 gates x hidden x (inputs + hidden) weights + 2 x 4 x hidden biases; then the classifier.
PARAMETERS = (64 * 12 * 5 + 64) + (4 * 32 * (64 + 32) + 8 * 32) + (4 * 32 * (32 + 32) + 8 * 32) + (32 * 4 + 4)


def test_json_describes_the_checkpoint(trained_model, speech_corpus):
    result = run_main("info", trained_model, "--json", check=True)
    info = json.loads(result.stdout)
    assert info["classes"] == ["down", "no", "up", "yes"]
    assert (info["format"], info["format_version"]) == ("kwsbatch-checkpoint", 1)
    checkpoint = load_checkpoint(trained_model)
    assert info["feature_config"] == checkpoint.feature_config.to_dict()
    assert info["feature_config"]["n_mfcc"] == 12 and info["feature_config"]["hop_length"] == 160
    assert info["model_config"] == checkpoint.model_config.to_dict()
    assert (info["model_config"]["hidden"], info["model_config"]["layers"], info["model_config"]["pooling"]) == (32, 2, "mean")
    assert info["size"]["parameters"] == PARAMETERS == 25028
    assert info["size"]["parameter_bytes"] == 4 * PARAMETERS
    assert info["size"]["file_bytes"] == trained_model.stat().st_size
    # Training fits a temperature on validation; the fixture's model is calibrated.
    assert (info["temperature"], info["calibrated"], info["resumable"]) == (checkpoint.temperature, checkpoint.temperature != 1.0, False)
    # Names and content hashes, not the training machine's paths.
    assert info["provenance"]["train_manifest"] == "train.csv"
    assert "/" not in json.dumps(info["provenance"]) and str(speech_corpus) not in result.stdout
    assert len(info["provenance"]["train_manifest_sha256"]) == 64
    assert info["provenance"]["train_config"]["epochs"] == 25
    assert 0.0 <= info["metrics"]["best_val_accuracy"] <= 1.0
    assert len(info["model_id"]) == 12


def test_text_names_each_part_on_one_line(trained_model, speech_corpus):
    lines = run_main("info", trained_model, check=True).stdout.splitlines()
    fields = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    assert list(fields) == ["model", "classes", "features", "network", "size", "calibration", "trained", "settings", "metrics", "resumable"]
    assert fields["classes"] == "4: down, no, up, yes"
    assert fields["network"] == "causal conv 64 channels (kernel 5, stride 3), unidirectional LSTM, 2 layers x 32 units, mean pooling, dropout 0"
    assert fields["features"].endswith(", per-clip mean normalisation")
    assert fields["size"] == "25,028 parameters (100.1 kB)"
    assert fields["calibration"].startswith(f"temperature {load_checkpoint(trained_model).temperature:g}")
    assert "train train.csv (sha256 " in fields["trained"] and str(speech_corpus) not in fields["trained"]
    assert fields["resumable"] == "no"


def test_last_checkpoint_is_resumable(trained_model):
    info = json.loads(run_main("info", trained_model.parent / "last.pt", "--json", check=True).stdout)
    assert info["resumable"] is True


def test_without_a_checkpoint_it_describes_the_bundled_model():
    info = json.loads(run_main("info", "--json", check=True).stdout)
    assert info["path"].endswith("default.pt") and len(info["classes"]) == 12


def test_a_missing_model_is_a_one_line_error(tmp_path):
    result = run_main("info", tmp_path / "nope.pt")
    assert (result.returncode, result.stderr) == (1, f"error: {tmp_path / 'nope.pt'}: model file not found\n")


def test_an_exported_model_is_described_from_the_metadata_export_wrote(trained_model, tmp_path):
    pytest.importorskip("onnx")
    checkpoint = json.loads(run_main("info", trained_model, "--json", check=True).stdout)
    for name, export_format in (("m.onnx", "onnx"), ("m.pt", "torchscript")):
        run_main("export", trained_model, "-o", tmp_path / name, check=True)
        info = json.loads(run_main("info", tmp_path / name, "--json", check=True).stdout)
        assert (info["format"], info["exported_by"], info["sample_rate"]) == (export_format, f"kwsbatch {__version__}", 16000)
        for key in ("model_id", "classes", "feature_config", "model_config", "temperature"):
            assert info[key] == checkpoint[key], key
        assert info["size"]["file_bytes"] == (tmp_path / name).stat().st_size
    lines = run_main("info", tmp_path / "m.onnx", check=True).stdout.splitlines()
    fields = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    assert list(fields) == ["model", "classes", "features", "network", "calibration", "inputs", "outputs"]
    assert fields["model"].endswith(f"(id {checkpoint['model_id']}, {fields['model'].split(', ')[1]}, ONNX, opset 17, exported by kwsbatch {__version__})")
    assert fields["classes"] == "4: down, no, up, yes"
    assert fields["inputs"].startswith("waveforms: float32 (batch, samples), mono at 16000 Hz")


@pytest.mark.filterwarnings("ignore")  # torch's exporters warn that they are deprecated
def test_a_model_kwsbatch_did_not_export_is_one_clear_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    with torch.no_grad():
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), tmp_path / "other.onnx", dynamo=False)
    maker = onnx.load(str(tmp_path / "other.onnx")).producer_name
    result = run_main("info", tmp_path / "other.onnx")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'other.onnx'}: an ONNX model made by {maker} ")
    assert result.stderr.endswith(", not exported by kwsbatch (no kwsbatch metadata: classes, sample_rate, model_id)\n")
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), tmp_path / "other.pt")
    result = run_main("info", tmp_path / "other.pt")
    assert (result.returncode, result.stderr) == (1, f"error: {tmp_path / 'other.pt'}: a TorchScript model that kwsbatch did not export (no kwsbatch.json inside)\n")


def test_a_one_layer_two_way_network_is_named_in_the_singular(trained_model, tmp_path):
    from dataclasses import replace

    from kwsbatch.model.checkpoint import save_checkpoint
    from kwsbatch.model.spotter import KeywordSpotter

    checkpoint = load_checkpoint(trained_model)
    config = replace(checkpoint.model_config, layers=1, bidirectional=True)
    weights = KeywordSpotter(checkpoint.feature_config, config).state_dict()  # fresh weights of that shape
    save_checkpoint(replace(checkpoint, model_config=config, state_dict=weights), tmp_path / "bi.pt")
    lines = run_main("info", tmp_path / "bi.pt", check=True).stdout.splitlines()
    network = next(line for line in lines if line.startswith("network"))
    assert network.endswith("bidirectional LSTM, 1 layer x 32 units, mean pooling, dropout 0")
