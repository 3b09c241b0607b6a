"""checkpoint.py: checkpoints rebuild their model exactly, and anything else is refused in one line."""

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import NOTEBOOK, run_main, tone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kwsbatch.errors import CheckpointError
from kwsbatch.model.checkpoint import FORMAT, FORMAT_VERSION, Checkpoint, checkpoint_id, load_checkpoint, save_checkpoint
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.spotter import KeywordSpotter

CLASSES = ("down", "no", "up", "yes")


def make_checkpoint(**model) -> Checkpoint:
    torch.manual_seed(0)
    features = FeatureConfig(n_mfcc=10, n_mels=32)
    config = ModelConfig(**(NOTEBOOK | dict(n_classes=len(CLASSES), n_features=10, hidden=12, layers=2) | model))
    spotter = KeywordSpotter(features, config)
    spotter.frontend.set_normalization(torch.linspace(-10, 3, 10), torch.linspace(1, 4, 10))
    return Checkpoint(
        classes=CLASSES,
        feature_config=features,
        model_config=config,
        state_dict=spotter.state_dict(),
        provenance={"train_manifest": "train.csv", "metrics": {"val_accuracy": 0.75}},
        temperature=1.5,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(make_checkpoint(), path)
    return path


@pytest.fixture(scope="module")
def waves() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.standard_normal((3, 12000)).astype(np.float32))
    batch[0] = torch.from_numpy(tone(440, 0.75))
    return batch, torch.tensor([12000, 700, 9000])


@pytest.mark.parametrize("model", [dict(), dict(pooling="mean", bidirectional=True)], ids=["last", "mean-bi"])
def test_round_trip_rebuilds_identical_outputs(tmp_path, waves, model):
    original = make_checkpoint(**model)
    save_checkpoint(original, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.classes == CLASSES
    assert (loaded.feature_config, loaded.model_config) == (original.feature_config, original.model_config)
    assert loaded.provenance == original.provenance
    assert loaded.temperature == 1.5 and loaded.training_state is None
    with torch.no_grad():
        expected = original.build()(*waves)
        assert torch.equal(loaded.build()(*waves), expected)
    assert loaded.build().training is False


def test_the_model_id_names_what_the_model_computes_not_when_it_was_written(tmp_path):
    original = make_checkpoint()
    save_checkpoint(original, tmp_path / "a.pt")
    rewritten = dataclasses.replace(
        original, provenance={"created": "another day"}, training_state={"epoch": 3}, source="elsewhere"
    )
    save_checkpoint(rewritten, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    ids = {checkpoint_id(load_checkpoint(tmp_path / name)) for name in ("a.pt", "b.pt")}
    assert ids == {checkpoint_id(original)} and len(checkpoint_id(original)) == 12

    nudged = {k: v.clone() for k, v in original.state_dict.items()}
    nudged["head.classifier.bias"][0] += 1e-6
    others = [
        dataclasses.replace(original, state_dict=nudged),
        dataclasses.replace(original, temperature=1.0),
        dataclasses.replace(original, classes=("down", "no", "yes", "up")),
    ]
    assert len({checkpoint_id(c) for c in [original, *others]}) == 4


def test_a_saved_checkpoint_is_plain_data_for_weights_only_loading(saved):
    raw = torch.load(saved, weights_only=True)
    assert (raw["format"], raw["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert raw["classes"] == list(CLASSES)
    assert raw["model_config"]["hidden"] == 12 and raw["feature_config"]["n_mfcc"] == 10
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())
    torch.testing.assert_close(raw["state_dict"]["frontend.mean"], torch.linspace(-10, 3, 10))


def test_saving_leaves_no_temporary_files_and_a_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(), path)
    before = path.read_bytes()
    broken = make_checkpoint()
    broken.provenance = {"note": threading.Lock()}  # cannot be pickled: the save fails midway
    with pytest.raises(TypeError, match="cannot pickle"):
        save_checkpoint(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def _truncated(path, good):
    path.write_bytes(good[: len(good) // 2])


def _header_only(path, good):
    path.write_bytes(good[:64])


def _random_bytes(path, good):
    path.write_bytes(np.random.default_rng(0).bytes(5000))


def _text(path, good):
    path.write_text("hello world\n" * 40)


def _empty(path, good):
    path.write_bytes(b"")


def _foreign(path, good):
    torch.save({"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, path)


def _plain_tensor(path, good):
    torch.save(torch.arange(10), path)


def _edit(path, **changes):
    raw = make_checkpoint().to_dict()
    for key, value in changes.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    torch.save(raw, path)


def _future_version(path, good):
    _edit(path, format_version=FORMAT_VERSION + 1)


def _class_count(path, good):
    _edit(path, classes=["yes", "no", "up"])


def _no_state_dict(path, good):
    _edit(path, state_dict=None)


def _bad_setting(path, good):
    _edit(path, model_config={**make_checkpoint().model_config.to_dict(), "pooling": "attention"})


def _weights_for_other_classes(path, good):
    # Header and settings agree on 4 classes, but the classifier weights were made for 3.
    raw = make_checkpoint().to_dict()
    raw["state_dict"]["head.classifier.weight"] = raw["state_dict"]["head.classifier.weight"][:3]
    raw["state_dict"]["head.classifier.bias"] = raw["state_dict"]["head.classifier.bias"][:3]
    torch.save(raw, path)


def _weights_for_other_settings(path, good):
    _edit(path, model_config={**make_checkpoint().model_config.to_dict(), "hidden": 16})


BAD_FILES = {
    "truncated": (_truncated, "not a readable kwsbatch model"),
    "header-only": (_header_only, "not a readable kwsbatch model"),
    "random-bytes": (_random_bytes, "not a readable kwsbatch model"),
    "text": (_text, "not a readable kwsbatch model"),
    "empty": (_empty, "not a readable kwsbatch model"),
    "foreign-dict": (_foreign, "not a kwsbatch model (no kwsbatch checkpoint header)"),
    "plain-tensor": (_plain_tensor, "not a kwsbatch model (no kwsbatch checkpoint header)"),
    "future-version": (_future_version, f"checkpoint format version {FORMAT_VERSION + 1} is not supported"),
    "class-count": (_class_count, "3 class names but the model has 4 outputs"),
    "no-state-dict": (_no_state_dict, "checkpoint is missing or has invalid fields"),
    "bad-setting": (_bad_setting, "checkpoint is missing or has invalid fields"),
    "weights-other-classes": (_weights_for_other_classes, "weights do not match the stored model settings"),
    "weights-other-settings": (_weights_for_other_settings, "weights do not match the stored model settings"),
}


@pytest.mark.parametrize("write, reason", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_raise_one_line_naming_the_file(tmp_path, saved, write, reason):
    path = tmp_path / "bad.pt"
    write(path, saved.read_bytes())
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {reason}")
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="model file not found"):
        load_checkpoint(tmp_path / "nope.pt")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_a_checkpoint_error_never_a_crash(tmp_path, saved, data):
    good = saved.read_bytes()
    damage = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if damage == "truncate":
        content = good[: data.draw(st.integers(0, len(good) - 1))]
    elif damage == "flip":
        at = data.draw(st.integers(0, len(good) - 1))
        content = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :]
    else:
        content = data.draw(st.binary(min_size=1, max_size=2000) | st.text(min_size=1).map(str.encode))
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
    else:
        # A flipped byte inside a tensor's data still loads: it is a valid file with other numbers.
        assert damage == "flip" and len(checkpoint.classes) == 4


class RunsCode:
    """Unpickling this calls os.system: what a malicious 'model' would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path) -> None:
    raw = make_checkpoint().to_dict()
    raw["provenance"] = {"payload": RunsCode(marker)}  # a real header, so only the payload can stop it
    torch.save(raw, path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "MARKER"
    write_malicious(path, marker)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: refused to load")
    assert not marker.exists()
    # The payload is live: an unrestricted load does run it. This is what the refusal prevented.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _write_bad(kind: str, path: Path, marker: Path, good: bytes) -> None:
    if kind == "malicious":
        write_malicious(path, marker)
    else:
        BAD_FILES[kind][0](path, good)


@pytest.mark.parametrize("kind", ["malicious", "truncated", "text", "weights-other-classes"])
def test_label_with_a_bad_model_prints_one_error_line_and_exits_1(tmp_path, saved, kind):
    sf.write(tmp_path / "x.wav", tone(440, 0.5), 16000)
    marker = tmp_path / "MARKER"
    _write_bad(kind, tmp_path / "bad.pt", marker, saved.read_bytes())
    result = run_main("label", "x.wav", "--model", "bad.pt", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.pt: "), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not marker.exists()
