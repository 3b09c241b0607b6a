"""`kwsbatch info`: what a checkpoint or an exported model is, for people (aligned lines) and machines (JSON).

An exported model (`kwsbatch export`) is described from the metadata export wrote into it, read
without running it: ONNX metadata properties (with the onnx package), or the kwsbatch.json inside
a TorchScript archive. A model kwsbatch did not export gets one line saying what it is.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from kwsbatch.errors import CheckpointError
from kwsbatch.extras import install_command
from kwsbatch.model.checkpoint import FORMAT, FORMAT_VERSION, checkpoint_id, load_checkpoint
from kwsbatch.tools.export import TORCHSCRIPT_METADATA

_EXPORT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def describe_model(path: str | os.PathLike) -> dict:
    """A checkpoint's description, or an exported model's (told apart by their bytes, not their names)."""
    path = Path(path)
    if path.is_file():
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any("/code/" in name for name in names):  # TorchScript: a torch archive that holds code
                    metadata = [n for n in names if n.endswith(f"/extra/{TORCHSCRIPT_METADATA}")]
                    if not metadata:
                        raise CheckpointError(f"{path}: a TorchScript model that kwsbatch did not export (no {TORCHSCRIPT_METADATA} inside)")
                    return _describe_export(path, "torchscript", json.loads(archive.read(metadata[0])))
        elif _looks_like_onnx(path):
            return _describe_export(path, "onnx", _onnx_metadata(path))
    return describe_checkpoint(path)


def _looks_like_onnx(path: Path) -> bool:
    # An ONNX file is a protobuf ModelProto whose first field is ir_version (field 1, a varint: byte 0x08);
    # torch.save's files are zip archives or pickles (0x80).
    with open(path, "rb") as f:
        return f.read(1) == b"\x08"


def _onnx_metadata(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        raise CheckpointError(f"{path}: an ONNX model; reading its metadata needs the onnx package: {install_command('onnx')}") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, or anything a damaged file makes onnx raise
        raise CheckpointError(f"{path}: not a readable model (corrupt or foreign file: {str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if "model_id" not in metadata:
        maker = " ".join(filter(None, [model.producer_name, model.producer_version])) or "an unknown producer"
        raise CheckpointError(f"{path}: an ONNX model made by {maker}, not exported by kwsbatch (no kwsbatch metadata: classes, sample_rate, model_id)")
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    return {**metadata, "opset": opsets.get("ai.onnx")}


def _describe_export(path: Path, export_format: str, metadata: dict) -> dict:
    """The metadata `kwsbatch export` wrote, decoded."""
    try:
        return {
            "path": str(path),
            "model_id": metadata["model_id"],
            "format": export_format,
            "exported_by": f"kwsbatch {metadata['kwsbatch_version']}",
            "opset": metadata.get("opset"),
            "classes": json.loads(metadata["classes"]),
            "sample_rate": int(metadata["sample_rate"]),
            "feature_config": json.loads(metadata["feature_config"]),
            "model_config": json.loads(metadata["model_config"]),
            "temperature": float(metadata["temperature"]),
            "inputs": metadata["inputs"],
            "outputs": metadata["outputs"],
            "size": {"file_bytes": path.stat().st_size},
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a {_EXPORT_NAMES[export_format]} model whose kwsbatch metadata is incomplete or invalid ({e!r})") from None


def describe_checkpoint(path: str | os.PathLike) -> dict:
    """Classes, feature and model settings, size, calibration, provenance and metrics of a checkpoint."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    spotter = checkpoint.build("cpu")
    parameters = list(spotter.parameters())
    buffers = list(spotter.buffers())
    provenance = dict(checkpoint.provenance)
    return {
        "path": str(path),
        "model_id": checkpoint_id(checkpoint),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(checkpoint.classes),
        "feature_config": checkpoint.feature_config.to_dict(),
        "model_config": checkpoint.model_config.to_dict(),
        "size": {
            "parameters": sum(p.numel() for p in parameters),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in parameters),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in buffers),
            "file_bytes": path.stat().st_size,
        },
        "temperature": checkpoint.temperature,
        "calibrated": checkpoint.temperature != 1.0,
        "resumable": checkpoint.training_state is not None,
        "metrics": provenance.pop("metrics", None),
        "provenance": provenance,
    }


def format_description(info: dict) -> str:
    """The description as aligned `name  value` lines."""
    lines = _export_lines(info) if info["format"] in _EXPORT_NAMES else _checkpoint_lines(info)
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def _export_lines(info: dict) -> list[tuple[str, str]]:
    opset = f", opset {info['opset']}" if info.get("opset") else ""
    what = f"{_EXPORT_NAMES[info['format']]}{opset}, exported by {info['exported_by']}"
    return [
        ("model", f"{info['path']} (id {info['model_id']}, {_bytes(info['size']['file_bytes'])}, {what})"),
        *_network_lines(info),
        ("calibration", f"temperature {info['temperature']:g}, inside the model"),
        ("inputs", info["inputs"]),
        ("outputs", info["outputs"]),
    ]


def _network_lines(info: dict) -> list[tuple[str, str]]:
    """What checkpoints and exports both say: classes, features, network."""
    features, model = info["feature_config"], info["model_config"]
    directions = "bidirectional" if model["bidirectional"] else "unidirectional"
    return [
        ("classes", f"{len(info['classes'])}: {', '.join(info['classes'])}"),
        (
            "features",
            f"{features['n_mfcc']} MFCC from {features['n_mels']} mel bands ({features['f_min']:g}-{features['f_max']:g} Hz) "
            f"at {features['sample_rate']} Hz, window {features['n_fft']}, hop {features['hop_length']} samples"
            + (f", per-clip {features['clip_norm']} normalisation" if features.get("clip_norm", "none") != "none" else ""),
        ),
        (
            "network",
            (
                f"causal conv {model['conv_channels']} channels (kernel {model['conv_kernel']}, stride {model['conv_stride']}), "
                if model.get("conv_channels")
                else ""
            )
            + f"{directions} LSTM, {model['layers']} layer{'s' if model['layers'] > 1 else ''} x {model['hidden']} units, {model['pooling']} pooling, "
            f"dropout {model['dropout']:g}",
        ),
    ]


def _checkpoint_lines(info: dict) -> list[tuple[str, str]]:
    size, metrics, provenance = info["size"], info["metrics"] or {}, info["provenance"]
    lines = [
        ("model", f"{info['path']} (id {info['model_id']}, {_bytes(size['file_bytes'])}, {info['format']} v{info['format_version']})"),
        *_network_lines(info),
        ("size", f"{size['parameters']:,} parameters ({_bytes(size['parameter_bytes'])})"),
        ("calibration", f"temperature {info['temperature']:g}" + ("" if info["calibrated"] else " (not calibrated)")),
    ]
    if provenance:
        lines.append(("trained", _training_line(provenance)))
    if provenance.get("started_from"):
        start = provenance["started_from"]
        lines.append(("started from", f"model {start['model_id']}, {start['trains']} trained"))
    if provenance.get("train_config"):
        lines.append(("settings", ", ".join(f"{k} {v}" for k, v in provenance["train_config"].items())))
    if metrics:
        lines.append(("metrics", ", ".join(f"{k} {_number(v)}" for k, v in metrics.items())))
    lines.append(("resumable", "yes (holds the training state; train --resume continues it)" if info["resumable"] else "no"))
    return lines


def _training_line(provenance: dict) -> str:
    versions = [f"{name} {provenance[key]}" for name, key in (("kwsbatch", "kwsbatch_version"), ("torch", "torch_version")) if provenance.get(key)]
    when = " ".join(filter(None, [provenance.get("created"), "with " + ", ".join(versions) if versions else ""]))
    parts = [when] if when else []
    for split in ("train", "val"):
        manifest = provenance.get(f"{split}_manifest")
        if manifest:
            digest = (provenance.get(f"{split}_manifest_sha256") or "")[:12]
            clips = provenance.get(f"n_{split}")
            parts.append(f"{split} {manifest}" + (f" (sha256 {digest})" if digest else "") + (f", {clips} clips" if clips is not None else ""))
    return "; ".join(parts) or "unknown"


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _bytes(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
