"""`kwsbatch export`: a checkpoint as one file that other runtimes run, checked against kwsbatch.

The exported model is portable.PortableSpotter traced once: raw mono waveforms at the model's
rate and their lengths in, class probabilities out, with the MFCC front end, the training-set
normalisation and the calibration temperature inside (as TensorFlow's frozen graphs and NeMo's
exports carry their preprocessing), and the class names and feature settings in its metadata.

ONNX goes through torch's TorchScript-based exporter: the torch.export-based one unrolls the LSTM
over the example's frame count and so cannot keep the number of samples dynamic. Before the file
is written, the exported model is run (onnxruntime for ONNX, torch.jit for TorchScript) on a batch
of clips of different lengths and must give kwsbatch's probabilities within 1e-4.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import kwsbatch
from kwsbatch.errors import KwsError
from kwsbatch.extras import install_command
from kwsbatch.files.atomic import atomic_write
from kwsbatch.files.loader import pad_waveforms
from kwsbatch.model.checkpoint import Checkpoint, checkpoint_id, load_checkpoint
from kwsbatch.model.config import FeatureConfig
from kwsbatch.model.portable import PortableSpotter
from kwsbatch.tools.config import EXPORT_FORMATS, ONNX_OPSET

_EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
TOLERANCE = 1e-4  # largest allowed |p_exported - p_kwsbatch| on the check batch
INPUTS = ("waveforms", "lengths")
OUTPUTS = ("probabilities",)
TORCHSCRIPT_METADATA = "kwsbatch.json"  # the extra file in a TorchScript archive that holds the metadata


class ExportError(KwsError):
    """A model could not be exported, or the export does not compute what kwsbatch computes."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    export_format: str
    size_bytes: int
    checked_clips: int
    max_difference: float | None  # None when the runtime to check with is not installed


def export_format(out: str | os.PathLike, given: str | None = None) -> str:
    if given is not None:
        if given not in EXPORT_FORMATS:
            raise ExportError(f"unknown export format {given!r} (choose from {', '.join(EXPORT_FORMATS)})")
        return given
    suffix = Path(out).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ExportError(f"{out}: cannot tell the export format from the extension; use .onnx or .pt, or pass --to")
    return _EXTENSIONS[suffix]


def export_metadata(checkpoint: Checkpoint, model_id: str) -> dict[str, str]:
    """What a program needs to use the exported model without kwsbatch, as text key/value pairs."""
    features = checkpoint.feature_config
    return {
        "kwsbatch_version": kwsbatch.__version__,
        "model_id": model_id,
        "classes": json.dumps(list(checkpoint.classes)),
        "sample_rate": str(features.sample_rate),
        "feature_config": json.dumps(features.to_dict()),
        "model_config": json.dumps(checkpoint.model_config.to_dict()),
        "temperature": repr(float(checkpoint.temperature)),
        "inputs": (
            f"waveforms: float32 (batch, samples), mono at {features.sample_rate} Hz in [-1, 1], zero-padded on the right; "
            "lengths: int64 (batch,), each clip's own number of samples"
        ),
        "outputs": "probabilities: float32 (batch, n_classes), softmax(logits / temperature), in the order of classes",
    }


def export_model(
    checkpoint_path: str | os.PathLike, out: str | os.PathLike, *, export_format: str = "onnx", opset: int = ONNX_OPSET
) -> ExportResult:
    """Export, check against kwsbatch's own model, then write out atomically."""
    checkpoint = load_checkpoint(checkpoint_path)
    portable = PortableSpotter(checkpoint)
    waveforms, lengths = check_batch(checkpoint.feature_config)
    metadata = export_metadata(checkpoint, checkpoint_id(checkpoint))
    if export_format == "onnx":
        data = _onnx_bytes(portable, (waveforms, lengths), metadata, opset)
        got = _run_onnx(data, waveforms, lengths)
    elif export_format == "torchscript":
        data = _torchscript_bytes(portable, (waveforms, lengths), metadata)
        got = _run_torchscript(data, waveforms, lengths)
    else:
        raise ExportError(f"unknown export format {export_format!r} (choose from {', '.join(EXPORT_FORMATS)})")
    difference = None
    if got is not None:
        difference = float(np.abs(got - kwsbatch_probabilities(checkpoint, waveforms, lengths)).max())
        if not difference <= TOLERANCE:
            raise ExportError(
                f"{out}: not written: the exported model's probabilities differ from kwsbatch's by {difference:.2g} "
                f"(more than {TOLERANCE:g}); please report this with the checkpoint"
            )
    with atomic_write(out, "wb") as f:
        f.write(data)
    return ExportResult(Path(out), export_format, len(data), len(lengths), difference)


def check_batch(features: FeatureConfig, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of tone-plus-noise clips of different lengths, one shorter than an analysis window."""
    generator = torch.Generator().manual_seed(seed)
    rate = features.sample_rate
    clips = []
    for i, n in enumerate((features.n_fft // 2, rate // 2, rate, rate * 3 // 2 + 7)):
        t = torch.arange(n) / rate
        tone = 0.3 * torch.sin(2 * torch.pi * (300 + 200 * i) * t)
        clips.append((tone + 0.05 * torch.randn(n, generator=generator)).float())
    return pad_waveforms(clips, min_samples=1)


def kwsbatch_probabilities(checkpoint: Checkpoint, waveforms: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """What `kwsbatch label` computes for a padded batch: the packed model, softmax at the checkpoint's temperature."""
    spotter = checkpoint.build("cpu")
    # kwsbatch pads clips shorter than one window to a window; the exported model does that itself.
    lengths = torch.clamp(lengths, min=checkpoint.feature_config.n_fft)
    if waveforms.shape[1] < checkpoint.feature_config.n_fft:
        waveforms = torch.nn.functional.pad(waveforms, (0, checkpoint.feature_config.n_fft - waveforms.shape[1]))
    with torch.inference_mode():
        return torch.softmax(spotter(waveforms, lengths) / checkpoint.temperature, dim=1).numpy()


def _onnx_bytes(portable: PortableSpotter, example: tuple[torch.Tensor, torch.Tensor], metadata: dict[str, str], opset: int) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package: {install_command('onnx')}") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is legacy, and about LSTM batch sizes; the check below is what counts.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            portable,
            example,
            buffer,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={"waveforms": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name, model.producer_version = "kwsbatch", kwsbatch.__version__
    model.doc_string = f"kwsbatch keyword spotter: {metadata['inputs']} -> {metadata['outputs']}"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run_onnx(data: bytes, waveforms: torch.Tensor, lengths: torch.Tensor) -> np.ndarray | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})[0]


def _torchscript_bytes(portable: PortableSpotter, example: tuple[torch.Tensor, torch.Tensor], metadata: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit warns that it is deprecated, and about the LSTM's shape checks being traced as constants.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(portable, example, check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return buffer.getvalue()


def _run_torchscript(data: bytes, waveforms: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        return loaded(waveforms, lengths).numpy()
