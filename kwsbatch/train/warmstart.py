"""Starting a training run from a trained checkpoint: `--init` (every layer trains) or `--finetune`
(only the classifier trains).

Either way the new model is the checkpoint's: its feature settings, its architecture and its
feature normalisation statistics, so before the first step it computes exactly what the
checkpoint does on the classes they share. Dropout is the run's own: it acts only while
training, so like the learning rate it is a choice of the run, not of the model. Only the
classes come from the new manifests: the classifier's rows (weights and bias) are matched by
class name, so a kept class keeps its row wherever it now sits and a new class gets a freshly
initialised one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cached_property

import torch

from kwsbatch.model.checkpoint import Checkpoint, checkpoint_id
from kwsbatch.model.config import FeatureConfig, ModelConfig
from kwsbatch.model.spotter import KeywordSpotter

CLASSIFIER = "head.classifier."


@dataclass(frozen=True)
class WarmStart:
    """The checkpoint a run starts from, and whether it trains every layer or only the classifier."""

    checkpoint: Checkpoint
    every_layer: bool

    @property
    def flag(self) -> str:
        return "--init" if self.every_layer else "--finetune"

    @cached_property
    def model_id(self) -> str:
        return checkpoint_id(self.checkpoint)

    def settings(self, n_classes: int, dropout: float) -> tuple[FeatureConfig, ModelConfig]:
        """The checkpoint's feature and model settings, with n_classes outputs and the run's dropout."""
        return self.checkpoint.feature_config, replace(self.checkpoint.model_config, n_classes=n_classes, dropout=dropout)

    def provenance(self) -> dict:
        """What the run records about its start: the checkpoint's model id, never a path that names one machine."""
        return {
            "model_id": self.model_id,
            "classes": list(self.checkpoint.classes),
            "trains": "every layer" if self.every_layer else "the classifier",
        }

    def load_into(self, spotter: KeywordSpotter, classes: tuple[str, ...]) -> str:
        """Copy the checkpoint's weights into spotter (built with settings()); say what was kept and what is new."""
        state = {k: v for k, v in self.checkpoint.state_dict.items() if not k.startswith(CLASSIFIER)}
        own = spotter.state_dict()
        for name in ("weight", "bias"):
            key = CLASSIFIER + name
            own[key] = _mapped_rows(self.checkpoint.state_dict[key], own[key], self.checkpoint.classes, classes)
        spotter.load_state_dict({**own, **state})
        kept = [c for c in classes if c in self.checkpoint.classes]
        new = [c for c in classes if c not in self.checkpoint.classes]
        dropped = [c for c in self.checkpoint.classes if c not in classes]
        trains = "training every layer" if self.every_layer else "training only the classifier"
        return (
            f"starting from {self.checkpoint.source} (model {self.model_id}), {trains}: "
            f"classifier rows kept for {_listed(kept)}, new for {_listed(new)}, dropped for {_listed(dropped)}"
        )

    def ignored_settings(self, features: FeatureConfig, model: ModelConfig | None) -> str | None:
        """The run's own feature and model settings that differ from the checkpoint's, which win; None when none do."""
        pairs = [(features, self.checkpoint.feature_config)]
        if model is not None:
            theirs = self.checkpoint.model_config
            pairs.append((replace(model, n_classes=theirs.n_classes, dropout=theirs.dropout), theirs))
        differ = [f"{k} {getattr(theirs, k)!r} (not {v!r})" for ours, theirs in pairs for k, v in asdict(ours).items() if getattr(theirs, k) != v]
        if not differ:
            return None
        return f"{self.flag}: the model and feature settings are the checkpoint's, not this run's: " + ", ".join(differ)


def _mapped_rows(theirs: torch.Tensor, fresh: torch.Tensor, their_classes: tuple[str, ...], classes: tuple[str, ...]) -> torch.Tensor:
    """(n_classes, ...) rows: the checkpoint's row for each class it knows, the fresh one for the others."""
    rows = fresh.clone()
    for i, name in enumerate(classes):
        if name in their_classes:
            rows[i] = theirs[their_classes.index(name)].to(rows.device)
    return rows


def _listed(classes: list[str]) -> str:
    return f"{len(classes)} ({', '.join(classes)})" if classes else "none"
