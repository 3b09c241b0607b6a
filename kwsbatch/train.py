"""Training: manifests in, a run folder out (best.pt, last.pt, history.csv).

Clips are decoded once into memory; each epoch shuffles them with a seeded generator, pads each
batch, computes MFCCs on the device and trains the packed LSTM. last.pt carries the optimizer,
scheduler and generator states, so ``resume=True`` continues exactly where a run stopped.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import kwsbatch
from kwsbatch.atomic import atomic_write
from kwsbatch.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kwsbatch.data import ClipSet, load_clips, split_for_validation
from kwsbatch.errors import KwsError, ManifestError
from kwsbatch.features import FeatureConfig, FeatureStats, pad_waveforms
from kwsbatch.label import resolve_device
from kwsbatch.manifest import ManifestRow, check_known_labels, read_manifest
from kwsbatch.model import KeywordSpotter, ModelConfig
from kwsbatch.progress import Reporter

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3  # Adam's learning rate (the notebook's 1e-3)
    weight_decay: float = 0.0
    lr_step: int = 5  # epochs between learning-rate decays (the notebook halves every 5)
    lr_gamma: float = 0.5
    accumulate: int = 1  # batches per optimizer step
    seed: int = 0
    val_fraction: float = 0.1  # held out of the train manifest when no validation manifest is given
    patience: int = 0  # stop after this many epochs without a better validation accuracy; 0 = never
    jobs: int = 1  # decode processes
    hidden: int = 64
    layers: int = 3
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: str = "last"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("epochs, batch_size and accumulate must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    skipped: int = 0


def train(
    train_manifest: str | Path,
    run_dir: str | Path,
    *,
    config: TrainConfig = TrainConfig(),
    features: FeatureConfig = FeatureConfig(),
    val_manifest: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
) -> TrainResult:
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    torch.manual_seed(config.seed)
    device = resolve_device(device)

    train_rows, val_rows = _read_splits(train_manifest, val_manifest, config.val_fraction)
    classes = tuple(sorted({r.label for r in train_rows}))
    if len(classes) < 2:
        raise ManifestError(f"{train_manifest}: needs at least two labels to train, found {list(classes)}")
    check_known_labels(val_rows, classes, known_by="the training manifest")

    train_set = _load(train_rows, classes, features, config, reporter, "loading train")
    val_set = _load(val_rows, classes, features, config, reporter, "loading val")

    spotter = KeywordSpotter(features, _model_config(config, features, len(classes))).to(device)
    spotter.frontend.set_normalization(*_feature_stats(spotter, train_set, config.batch_size, device))
    optimizer = torch.optim.Adam(spotter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    shuffle = torch.Generator().manual_seed(config.seed)

    provenance = {
        "kwsbatch_version": kwsbatch.__version__,
        "torch_version": str(torch.__version__),
        "train_manifest": str(train_manifest),
        "train_manifest_sha256": _sha256(train_manifest),
        "val_manifest": str(val_manifest) if val_manifest else None,
        "val_manifest_sha256": _sha256(val_manifest) if val_manifest else None,
        "train_config": asdict(config),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "skipped_unreadable": len(train_set.failures) + len(val_set.failures),
    }
    history: list[dict] = []
    best = {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf}
    start_epoch = 1
    if resume:
        start_epoch, history, best = _restore(run_dir / "last.pt", spotter, optimizer, scheduler, shuffle, classes)
        reporter.log(f"resuming {run_dir} at epoch {start_epoch}")

    loss_fn = nn.CrossEntropyLoss()
    stale = 0
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = _train_epoch(spotter, train_set, optimizer, loss_fn, config, shuffle, device, reporter, epoch)
        val_loss, val_acc = evaluate_clips(spotter, val_set, config.batch_size, device)
        scheduler.step()
        row = dict(
            epoch=epoch,
            train_loss=round(train_loss, 6),
            train_accuracy=round(train_acc, 6),
            val_loss=round(val_loss, 6),
            val_accuracy=round(val_acc, 6),
            lr=lr,
            seconds=round(time.perf_counter() - started, 2),
        )
        history.append(row)
        improved = (val_acc, -val_loss) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss}
        metrics = {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "epoch": epoch, **row}
        checkpoint = Checkpoint(
            classes=classes,
            feature_config=features,
            model_config=spotter.head.config,
            state_dict=spotter.state_dict(),
            provenance={**provenance, "created": _now(), "metrics": metrics},
        )
        if improved:
            save_checkpoint(checkpoint, run_dir / "best.pt")
        checkpoint.training_state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_state": shuffle.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "history": history,
            "best": best,
        }
        save_checkpoint(checkpoint, run_dir / "last.pt")
        _write_history(run_dir / "history.csv", history)
        reporter.log(
            f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
            f"val loss {val_loss:.4f} acc {val_acc:.2%}  lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
        )
        stale = 0 if improved else stale + 1
        if config.patience and stale >= config.patience:
            reporter.log(f"early stop: no better validation accuracy for {config.patience} epochs")
            break
    return TrainResult(run_dir, best["epoch"], best["val_accuracy"], history, provenance["skipped_unreadable"])


def evaluate_clips(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model over a clip set."""
    spotter.eval()
    total_loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(clips)))
            logits, targets = _forward(spotter, clips, idx, device)
            total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(1) == targets).sum().item()
    n = max(len(clips), 1)
    return total_loss / n, correct / n


def _train_epoch(spotter, clips: ClipSet, optimizer, loss_fn, config: TrainConfig, shuffle, device, reporter, epoch):
    spotter.train()
    order = torch.randperm(len(clips), generator=shuffle)
    batches = list(torch.split(order, config.batch_size))
    total_loss, correct, seen = 0.0, 0, 0
    optimizer.zero_grad()
    reporter.start(f"epoch {epoch}/{config.epochs}", len(clips))
    for step, idx in enumerate(batches, start=1):
        logits, targets = _forward(spotter, clips, idx, device)
        loss = loss_fn(logits, targets)
        (loss / config.accumulate).backward()
        if step % config.accumulate == 0 or step == len(batches):
            optimizer.step()
            optimizer.zero_grad()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(idx)
        reporter.advance(len(idx), loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.1%}")
    reporter.stop()
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _forward(spotter: KeywordSpotter, clips: ClipSet, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    waves, lengths = pad_waveforms([clips.waveforms[i] for i in idx.tolist()], min_samples=spotter.frontend.config.n_fft)
    logits = spotter(waves.to(device), lengths.to(device))
    return logits, clips.targets[idx].to(device)


def _feature_stats(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    stats = FeatureStats(spotter.frontend.config.n_mfcc)
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            waves, lengths = pad_waveforms(clips.waveforms[start : start + batch_size], min_samples=spotter.frontend.config.n_fft)
            stats.update(*spotter.frontend.raw(waves.to(device), lengths))
    mean, std = stats.mean_std()
    return mean.to(device), std.to(device)


def _read_splits(train_manifest, val_manifest, val_fraction) -> tuple[list[ManifestRow], list[ManifestRow]]:
    rows = read_manifest(train_manifest, require_label=True)
    if val_manifest is not None:
        return rows, read_manifest(val_manifest, require_label=True)
    train_rows, val_rows = split_for_validation(rows, val_fraction)
    if not train_rows or not val_rows:
        raise ManifestError(
            f"{train_manifest}: too few rows (or speakers) to hold out {val_fraction:.0%} for validation; pass --val"
        )
    return train_rows, val_rows


def _load(rows, classes, features: FeatureConfig, config: TrainConfig, reporter: Reporter, description: str) -> ClipSet:
    clips = load_clips(rows, classes, features.sample_rate, jobs=config.jobs, reporter=reporter, description=description)
    for row, reason in clips.failures[:5]:
        reporter.warn(f"skipping {row.source}: {reason}")
    if len(clips.failures) > 5:
        reporter.warn(f"... and {len(clips.failures) - 5} more unreadable clips skipped")
    if not len(clips):
        raise KwsError(f"{description}: none of the {len(rows)} clips could be read")
    return clips


def _model_config(config: TrainConfig, features: FeatureConfig, n_classes: int) -> ModelConfig:
    return ModelConfig(
        n_classes=n_classes,
        n_features=features.n_mfcc,
        hidden=config.hidden,
        layers=config.layers,
        dropout=config.dropout,
        bidirectional=config.bidirectional,
        pooling=config.pooling,
    )


def _restore(path: Path, spotter, optimizer, scheduler, shuffle, classes):
    checkpoint = load_checkpoint(path)
    state = checkpoint.training_state
    if state is None:
        raise KwsError(f"{path}: has no training state to resume from")
    if checkpoint.classes != classes:
        raise KwsError(f"{path}: was trained on classes {list(checkpoint.classes)}, this manifest has {list(classes)}")
    stored = {**checkpoint.feature_config.to_dict(), **checkpoint.model_config.to_dict()}
    given = {**spotter.frontend.config.to_dict(), **spotter.head.config.to_dict()}
    changed = [f"{k} {stored[k]} (now {given[k]})" for k in stored if stored[k] != given[k]]
    if changed:
        raise KwsError(f"{path}: was trained with {', '.join(changed)}; resume with the run's original settings")
    spotter.load_state_dict(checkpoint.state_dict)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    shuffle.set_state(state["shuffle_state"])
    torch.set_rng_state(state["torch_rng_state"])
    return state["epoch"] + 1, list(state["history"]), dict(state["best"])


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
