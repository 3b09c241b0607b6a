"""`kwsbatch info`: what a checkpoint is, for people (a few aligned lines) and for machines (JSON)."""

from __future__ import annotations

import os
from pathlib import Path

from kwsbatch.model.checkpoint import FORMAT, FORMAT_VERSION, checkpoint_id, load_checkpoint


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
    features, model, size = info["feature_config"], info["model_config"], info["size"]
    metrics, provenance = info["metrics"] or {}, info["provenance"]
    directions = "bidirectional" if model["bidirectional"] else "unidirectional"
    lines = [
        ("model", f"{info['path']} (id {info['model_id']}, {_bytes(size['file_bytes'])}, {info['format']} v{info['format_version']})"),
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
            + f"{directions} LSTM, {model['layers']} layers x {model['hidden']} units, {model['pooling']} pooling, "
            f"dropout {model['dropout']:g}",
        ),
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
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


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
