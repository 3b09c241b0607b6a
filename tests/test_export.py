"""export.py through the CLI: ONNX and TorchScript models that run without kwsbatch and match it."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, run_main

from kwsbatch.model.checkpoint import Checkpoint, checkpoint_id, load_checkpoint, save_checkpoint
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.scorer import Scorer
from kwsbatch.model.spotter import KeywordSpotter

ort = pytest.importorskip("onnxruntime")

# Real clips cut to several lengths, one shorter than an analysis window (400 samples).
CLIPS = [("yes/v03.wav", 16000), ("no/v07.wav", 11025), ("up/v11.wav", 6400), ("down/v03.wav", 2000), ("yes/v07.wav", 250)]
# Run first in a program that must not use kwsbatch: any import of it fails.
WITHOUT_KWSBATCH = "import sys; sys.modules['kwsbatch'] = None\n"


def real_clips(corpus) -> list[torch.Tensor]:
    return [torch.from_numpy(sf.read(corpus / path, dtype="float32")[0][:n]) for path, n in CLIPS]


def padded(waves: list[torch.Tensor], extra: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A zero-padded (batch, samples) float32 batch and its int64 lengths, as a user would build them."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), lengths.max() + extra), dtype=np.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave.numpy()
    return batch, lengths


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    onnx_run = run_main("export", trained_model, "-o", out / "model.onnx", check=True)
    assert re.search(r"wrote .*model\.onnx \(onnx, [\d.]+ MB\): matches kwsbatch on 4 clips", onnx_run.stderr)
    run_main("export", trained_model, "-o", out / "model.pt", check=True)
    return out


def test_onnx_probabilities_equal_pytorch_for_clips_of_several_lengths_in_one_batch(exported, trained_model, speech_corpus):
    waves = real_clips(speech_corpus)
    expected = Scorer(load_checkpoint(trained_model), device="cpu").probabilities(waves)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    waveforms, lengths = padded(waves)
    got = session.run(["probabilities"], {"waveforms": waveforms, "lengths": lengths})[0]
    assert got.shape == expected.shape == (len(CLIPS), 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert list(got.argmax(1)) == list(expected.argmax(1))


def test_onnx_batch_and_sample_axes_are_dynamic_and_padding_is_ignored(exported, speech_corpus):
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    waves = real_clips(speech_corpus)
    batch = session.run(None, dict(zip(("waveforms", "lengths"), padded(waves))))[0]
    more_padding = session.run(None, dict(zip(("waveforms", "lengths"), padded(waves, extra=3000))))[0]
    alone = np.concatenate([session.run(None, dict(zip(("waveforms", "lengths"), padded([w]))))[0] for w in waves])
    np.testing.assert_allclose(more_padding, batch, rtol=0, atol=1e-6)
    np.testing.assert_allclose(alone, batch, rtol=0, atol=1e-6)


def test_onnx_metadata_says_what_the_model_is(exported, trained_model):
    checkpoint = load_checkpoint(trained_model)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(checkpoint.classes) == ["down", "no", "up", "yes"]
    assert json.loads(meta["feature_config"]) == checkpoint.feature_config.to_dict()
    assert json.loads(meta["model_config"]) == checkpoint.model_config.to_dict()
    assert (meta["sample_rate"], meta["temperature"], meta["model_id"]) == ("16000", str(checkpoint.temperature), checkpoint_id(checkpoint))
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {"waveforms": ("tensor(float)", ["batch", "samples"]), "lengths": ("tensor(int64)", ["batch"])}
    assert [(o.name, o.type) for o in session.get_outputs()] == [("probabilities", "tensor(float)")]


def test_torchscript_runs_without_kwsbatch_and_equals_pytorch(exported, trained_model, speech_corpus, tmp_path):
    waves = real_clips(speech_corpus)
    expected = Scorer(load_checkpoint(trained_model), device="cpu").probabilities(waves)
    waveforms, lengths = padded(waves)
    np.save(tmp_path / "waveforms.npy", waveforms)
    np.save(tmp_path / "lengths.npy", lengths)
    program = WITHOUT_KWSBATCH + (
        "import json, numpy as np, torch\n"
        "extra = {'kwsbatch.json': ''}\n"
        f"model = torch.jit.load({str(exported / 'model.pt')!r}, _extra_files=extra)\n"
        "w, n = torch.from_numpy(np.load('waveforms.npy')), torch.from_numpy(np.load('lengths.npy'))\n"
        "np.save('probabilities.npy', model(w, n).detach().numpy())\n"
        "print(json.loads(extra['kwsbatch.json'])['classes'])\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.replace("'", '"')) == ["down", "no", "up", "yes"]
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), expected, rtol=0, atol=1e-4)


def documented_onnx_program() -> str:
    page = (REPO / "docs" / "interoperability.md").read_text()
    section = page[page.index("## export") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_program_labels_a_wav_with_onnxruntime_and_numpy_alone(exported, trained_model, speech_corpus, tmp_path):
    program = documented_onnx_program()
    assert len(program.strip().splitlines()) <= 10
    (tmp_path / "label_wav.py").write_text(WITHOUT_KWSBATCH + program)
    shutil.copy(exported / "model.onnx", tmp_path / "model.onnx")
    for clip in ("yes/v03.wav", "down/v07.wav"):
        ours = run_main("label", speech_corpus / clip, "--model", trained_model, "-q", check=True).stdout.splitlines()
        row = dict(zip(ours[0].split(","), ours[1].split(",")))
        result = subprocess.run([sys.executable, "label_wav.py", str(speech_corpus / clip)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        label, confidence = result.stdout.split()
        assert label == row["label"]
        assert float(confidence) == pytest.approx(float(row["confidence"]), abs=1e-3)


@pytest.mark.parametrize("bidirectional, pooling", [(True, "last"), (True, "mean"), (False, "max"), (True, "max")])
def test_bidirectional_and_max_pooled_models_export_exactly(bidirectional, pooling, tmp_path, speech_corpus):
    """Random weights and a low temperature: sharp probabilities, so a wrong backward direction would show."""
    torch.manual_seed(7)
    config = ModelConfig(n_classes=3, hidden=16, layers=2, bidirectional=bidirectional, pooling=pooling, conv_channels=0)
    spotter = KeywordSpotter(FeatureConfig(clip_norm="none"), config)
    with torch.no_grad():
        for p in spotter.head.parameters():
            p.mul_(4.0)
    spotter.frontend.set_normalization(torch.full((12,), -20.0), torch.full((12,), 15.0))
    save_checkpoint(Checkpoint(("a", "b", "c"), FeatureConfig(clip_norm="none"), config, spotter.state_dict(), temperature=0.2), tmp_path / "bi.pt")
    run_main("export", tmp_path / "bi.pt", "-o", tmp_path / "bi.onnx", "-q", check=True)
    waves = real_clips(speech_corpus)
    expected = Scorer(load_checkpoint(tmp_path / "bi.pt"), device="cpu").probabilities(waves)
    session = ort.InferenceSession(str(tmp_path / "bi.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip(("waveforms", "lengths"), padded(waves))))[0]
    assert expected.max() > 0.6
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_format_flag_overrides_the_extension(trained_model, tmp_path):
    run_main("export", trained_model, "-o", tmp_path / "model.bin", "--to", "torchscript", "-q", check=True)
    with open(tmp_path / "model.bin", "rb") as f:
        assert f.read(2) == b"PK"  # a TorchScript archive is a zip file


def test_unknown_extension_is_a_one_line_error_and_writes_nothing(trained_model, tmp_path):
    result = run_main("export", trained_model, "-o", tmp_path / "model.bin")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'model.bin'}: cannot tell the export format from the extension; use .onnx or .pt, or pass --to"
    )
    assert list(tmp_path.iterdir()) == []


def test_exporting_a_file_that_is_not_a_model_fails_cleanly(tmp_path):
    (tmp_path / "notes.pt").write_text("not a model")
    result = run_main("export", tmp_path / "notes.pt", "-o", tmp_path / "model.onnx")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'notes.pt'}: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "model.onnx").exists()


def test_the_bundled_model_exports_with_its_conv_front_end_and_clip_norm(tmp_path):
    """The default model uses the causal conv and per-clip normalisation; export checks itself within 1e-4."""
    result = run_main("export", "-o", tmp_path / "default.onnx")
    assert result.returncode == 0, result.stderr
    assert "matches kwsbatch on 4 clips" in result.stderr
