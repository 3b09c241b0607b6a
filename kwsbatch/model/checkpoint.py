"""One-file checkpoints that rebuild their own model and never run code when loaded.

A checkpoint is a dict of plain Python values and tensors, read with
``torch.load(weights_only=True)``: configs are stored as dicts, not pickled classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from kwsbatch.errors import CheckpointError
from kwsbatch.files.atomic import atomic_write
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.spotter import KeywordSpotter

FORMAT = "kwsbatch-checkpoint"
FORMAT_VERSION = 1

# How torch's weights-only unpickler words a refused class or call; anything else it rejects
# ("Unsupported operand ...") is damage, not an attempt to run code.
_REFUSED_MARKERS = ("global", "call reduce", "create new object")

# Settings added after checkpoints were first written, at the values the models saved before had:
# a missing field means the model was built without it, whatever today's default is.
_BEFORE_MODEL_SETTINGS = {"pooling": "last", "conv_channels": 0, "conv_kernel": 5, "conv_stride": 2}
_BEFORE_FEATURE_SETTINGS = {"clip_norm": "none"}


@dataclass
class Checkpoint:
    classes: tuple[str, ...]
    feature_config: FeatureConfig
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # a KeywordSpotter's, normalisation buffers included
    provenance: dict = field(default_factory=dict)  # version, training manifest hash, date, metrics
    training_state: dict | None = None  # optimizer, scheduler, epoch, RNG: only in last.pt, for --resume
    temperature: float = 1.0  # softmax temperature; 1.0 until calibrated
    source: str = ""  # the file it was read from, for messages; not saved

    def build(self, device: torch.device | str = "cpu") -> KeywordSpotter:
        """The model in eval mode on device, with this checkpoint's weights."""
        spotter = KeywordSpotter(self.feature_config, self.model_config)
        try:
            spotter.load_state_dict(self.state_dict)
        except RuntimeError as e:
            detail = str(e).strip().splitlines()
            where = f"{self.source}: " if self.source else ""
            raise CheckpointError(f"{where}weights do not match the stored model settings ({detail[-1].strip()})") from None
        return spotter.to(device).eval()

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "feature_config": self.feature_config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "provenance": self.provenance,
            "training_state": self.training_state,
            "temperature": float(self.temperature),
        }


def default_model_path() -> Path:
    """The model bundled with the package, used when no --model is given."""
    return Path(str(resources.files("kwsbatch") / "assets" / "default.pt"))


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    with atomic_write(path, "wb") as f:
        torch.save(checkpoint.to_dict(), f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; any problem is one CheckpointError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the error below says what matters.
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the GLOBAL it blocked (a class or function to call);
        # any other failure of it ("Unsupported operand") is bytes that are not a pickle at all.
        if any(marker in str(e).lower() for marker in _REFUSED_MARKERS):
            raise CheckpointError(
                f"{path}: refused to load: the file holds objects other than plain data and tensors "
                "(it may run code); kwsbatch loads only its own checkpoint format"
            ) from None
        raise CheckpointError(f"{path}: not a readable kwsbatch model (corrupt or foreign file)") from None
    except Exception as e:  # damaged bytes can fail anywhere in torch.load: KeyError, IndexError, ...
        reason = "truncated or corrupt" if _looks_truncated(e, path) else "corrupt or foreign file"
        raise CheckpointError(f"{path}: not a readable kwsbatch model ({reason})") from None
    checkpoint = _from_dict(raw, path)
    # Build once, so weights that do not fit the stored settings fail here (the message names the
    # file); building initialises weights, so the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        checkpoint.build()
    return checkpoint


def checkpoint_id(checkpoint: Checkpoint) -> str:
    """A short hash of what the model computes: classes, settings, temperature and weights.

    Not of the file: its provenance (training date, paths) and, in last.pt, the optimizer state
    would give two bit-identical trainings different ids, and so different output CSVs.
    """
    digest = hashlib.sha256()
    settings = [list(checkpoint.classes), checkpoint.feature_config.to_dict(), checkpoint.model_config.to_dict(), checkpoint.temperature]
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(checkpoint.state_dict):
        tensor = checkpoint.state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


def _from_dict(raw: object, path: Path) -> Checkpoint:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kwsbatch model (no kwsbatch checkpoint header)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported by this kwsbatch "
            f"(it reads version {FORMAT_VERSION}); use the kwsbatch release that wrote it"
        )
    try:
        classes = tuple(str(c) for c in raw["classes"])
        feature_config = FeatureConfig(**{**_BEFORE_FEATURE_SETTINGS, **raw["feature_config"]})
        model_config = ModelConfig(**{**_BEFORE_MODEL_SETTINGS, **raw["model_config"]})
        state_dict = dict(raw["state_dict"])
        provenance = dict(raw.get("provenance") or {})
        temperature = float(raw.get("temperature", 1.0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint is missing or has invalid fields ({e})") from None
    if len(classes) != model_config.n_classes:
        raise CheckpointError(
            f"{path}: {len(classes)} class names but the model has {model_config.n_classes} outputs"
        )
    return Checkpoint(
        classes=classes,
        feature_config=feature_config,
        model_config=model_config,
        state_dict=state_dict,
        provenance=provenance,
        training_state=raw.get("training_state"),
        temperature=temperature,
        source=str(path),
    )


def _looks_truncated(error: Exception, path: Path) -> bool:
    text = str(error).lower()
    if isinstance(error, EOFError) or "central directory" in text or "failed finding" in text:
        return True
    # A torch zip archive that failed to load otherwise (miniz seeks past the end: EINVAL) lost its tail.
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
