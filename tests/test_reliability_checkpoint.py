"""Fault injection, bad checkpoints: truncated, random, other format versions, classes that do not
match the weights, and pickles crafted to run code, which must be refused without running it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main

from kwsbatch.errors import CheckpointError
from kwsbatch.model.checkpoint import default_model_path, load_checkpoint

EXIT_ERROR = 1


def _raw() -> dict:
    return torch.load(default_model_path(), weights_only=True)


def _changed(**fields):
    def write(path: Path) -> None:
        raw = _raw()
        for name, change in fields.items():
            raw[name] = change(raw[name])
        torch.save(raw, path)

    return write


BAD = {
    "truncated": (lambda p: p.write_bytes(default_model_path().read_bytes()[:30000]), "not a readable kwsbatch model (truncated or corrupt)"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable kwsbatch model (truncated or corrupt)"),
    "random-bytes": (lambda p: p.write_bytes(np.random.default_rng(5).bytes(5000)), "not a readable kwsbatch model (corrupt or foreign file)"),
    "plain-tensor": (lambda p: torch.save(torch.zeros(3), p), "not a kwsbatch model (no kwsbatch checkpoint header)"),
    "older-version": (_changed(format_version=lambda v: 0), "checkpoint format version 0 is not supported by this kwsbatch (it reads version 1); use the kwsbatch release that wrote it"),
    "newer-version": (_changed(format_version=lambda v: 2), "checkpoint format version 2 is not supported by this kwsbatch (it reads version 1); use the kwsbatch release that wrote it"),
    "fewer-classes": (_changed(classes=lambda c: c[:-1]), "11 class names but the model has 12 outputs"),
    "config-not-weights": (_changed(model_config=lambda c: {**c, "hidden": 2 * c["hidden"]}), "weights do not match the stored model settings (size mismatch for "),
    "missing-field": (_changed(feature_config=lambda c: {**c, "no_such_setting": 1}), "checkpoint is missing or has invalid fields ("),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_checkpoint_is_one_error_line_naming_the_file(tmp_path, case):
    write, message = BAD[case]
    path = tmp_path / f"{case}.pt"
    write(path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path).build()
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


class _Payload:
    """Unpickling this calls os.system: the marker file appears if anything ran it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(kind: str, path: Path, marker: Path) -> None:
    payload = _Payload(marker)
    if kind == "inside-a-checkpoint":  # the real header, so only the unpickler stands in the way
        torch.save({**_raw(), "provenance": payload}, path)
    elif kind == "legacy-torch-format":
        torch.save({**_raw(), "provenance": payload}, path, _use_new_zipfile_serialization=False)
    elif kind == "bare-pickle-protocol-2":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        path.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("kind", ["inside-a-checkpoint", "legacy-torch-format", "bare-pickle-protocol-2", "bare-pickle-latest"])
def test_a_pickle_crafted_to_run_code_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "pwned"
    model = tmp_path / "evil.pt"
    _malicious(kind, model, marker)
    # The payload works: plain unpickling runs it (then the marker is removed for the real test).
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model)
    assert str(error.value).startswith(f"{model}: ")
    assert "refused to load" in str(error.value) or "corrupt or foreign file" in str(error.value)
    assert not marker.exists()


def test_every_command_that_reads_a_model_refuses_the_crafted_pickle(tmp_path):
    marker = tmp_path / "pwned"
    model = tmp_path / "evil.pt"
    _malicious("inside-a-checkpoint", model, marker)
    clip = default_model_path().parent / "samples"
    wav = next(clip.glob("*.wav"))
    (tmp_path / "m.csv").write_text(f"path,label\n{wav},yes\n{wav},no\n")
    refusal = f"error: {model}: refused to load: the file holds objects other than plain data and tensors (it may run code); kwsbatch loads only its own checkpoint format\n"
    for command in (
        ["label", wav, "--model", model],
        ["evaluate", tmp_path / "m.csv", "--model", model, "-o", tmp_path / "report"],
        ["train", tmp_path / "m.csv", "--val", tmp_path / "m.csv", "--finetune", model, "-o", tmp_path / "run"],
        ["info", model],
        ["export", model, "-o", tmp_path / "m.onnx"],
    ):
        result = run_main(*command, "-q")
        assert (result.returncode, result.stderr) == (EXIT_ERROR, refusal), command
    assert not marker.exists()


def test_resume_from_a_truncated_last_checkpoint_is_an_error_naming_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(default_model_path().read_bytes()[:10000])
    wav = next((default_model_path().parent / "samples").glob("*.wav"))
    (tmp_path / "m.csv").write_text(f"path,label\n{wav},yes\n{wav},no\n")
    result = run_main("train", tmp_path / "m.csv", "--val", tmp_path / "m.csv", "-o", run, "--resume", "-q")
    assert result.returncode == EXIT_ERROR
    assert result.stderr == f"error: {run / 'last.pt'}: not a readable kwsbatch model (truncated or corrupt)\n"
