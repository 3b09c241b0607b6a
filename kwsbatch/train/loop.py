"""Training: manifests in, a run folder out (best.pt, last.pt, history.csv).

Clips are decoded once into memory; each epoch shuffles (or class-balance samples) them with a
seeded generator, pads each batch, augments the padded batch on the device (augment.py), computes
MFCCs there and trains the LSTM. last.pt carries the optimizer, scheduler and generator
states, so ``resume=True`` continues exactly where a run stopped. At the end the best model's
softmax temperature is fitted on the validation clips (calibrate.py) and stored in best.pt.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

import kwsbatch
from kwsbatch.errors import KwsError, ManifestError
from kwsbatch.faults import hold
from kwsbatch.files.atomic import atomic_write, remove_stale_temporaries
from kwsbatch.files.manifest import ManifestRow, check_known_labels, read_manifest
from kwsbatch.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kwsbatch.model.device import full_float32, resolve_device
from kwsbatch.model.features import FeatureConfig, FeatureStats, pad_waveforms
from kwsbatch.model.spotter import KeywordSpotter, ModelConfig
from kwsbatch.progress import Reporter
from kwsbatch.train.augment import NOISE_LABEL, Augmentation, AugmentConfig, load_noise
from kwsbatch.train.calibrate import calibration_error, fit_temperature
from kwsbatch.train.data import ClipSet, load_clips, split_for_validation
from kwsbatch.train.distributed import Process, average_gradients, broadcast_parameters, join, leave, rank_share, sum_across

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
BALANCES = ("none", "sample", "weight")
NOISE_DIR = "_background_noise_"  # where `kwsbatch synth` (and Speech Commands) keep long noise files


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
    conv_channels: int = 0  # 0: no convolutional front end
    conv_kernel: int = 5
    conv_stride: int = 2
    # "sample": draw each epoch's clips with probability 1 / (its class's count), so every class is
    # seen equally often; "weight": weight the loss by that instead; "none": as the manifest has them.
    balance: str = "none"
    finetune: str | None = None  # checkpoint to start from, training only its classifier

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("epochs, batch_size and accumulate must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {self.balance!r}")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    skipped: int = 0
    temperature: float = 1.0


def train(
    train_manifest: str | Path,
    run_dir: str | Path,
    *,
    config: TrainConfig = TrainConfig(),
    features: FeatureConfig = FeatureConfig(),
    augment: AugmentConfig = AugmentConfig(),
    val_manifest: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
    manifest_format: str | None = None,
) -> TrainResult:
    """Train into run_dir; under torchrun, as one of WORLD_SIZE processes (distributed.py), rank 0 writing."""
    process = join(resolve_device(device))
    _reproducible_on(process.device)
    result = _train(
        train_manifest, run_dir, config=config, features=features, augment=augment, val_manifest=val_manifest,
        process=process, resume=resume, reporter=reporter if process.writes else None, manifest_format=manifest_format,
    )
    leave(process)
    return result


def _reproducible_on(device: torch.device) -> None:
    """Same seed, same data, same model on a GPU too.

    By default cuDNN and cuBLAS pick kernels by speed, and some of them sum in an order that varies
    from run to run; these settings pin the deterministic ones (cuBLAS reads its setting when it
    starts, so before the first matrix product), in full float32 as labelling runs.
    """
    if device.type != "cuda":
        return
    full_float32(device)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _seed_gpu_dropout(device: torch.device, seed: int, epoch: int, rank: int) -> None:
    """On a GPU, seed this epoch's dropout from (seed, epoch, rank), so that --resume draws what an uninterrupted run does.

    There the LSTM's dropout masks come from cuDNN's own generator state, which last.pt cannot
    hold; cuDNN draws a fresh state from the device's generator after each seeding. On the CPU,
    dropout draws from torch's generator, which last.pt holds.
    """
    if device.type == "cuda":
        torch.cuda.manual_seed(seed + 104729 * epoch + 7919 * rank)


def _train(
    train_manifest, run_dir, *, config: TrainConfig, features: FeatureConfig, augment: AugmentConfig, val_manifest,
    process: Process, resume: bool, reporter: Reporter | None, manifest_format: str | None,
) -> TrainResult:
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt", "history.csv"):
        remove_stale_temporaries(run_dir / name)  # left by a killed run's atomic writes
    if resume and not any((run_dir / name).exists() for name in ("last.pt", "history.csv")):
        # Killed before its first epoch ended (while decoding, say): the same --resume command starts over.
        reporter.log(f"nothing to resume in {run_dir} (no epoch finished yet): starting at epoch 1")
        resume = False
    torch.manual_seed(config.seed)
    device = process.device

    train_rows, val_rows = _read_splits(train_manifest, val_manifest, config.val_fraction, manifest_format)
    classes = tuple(sorted({r.label for r in train_rows}))
    if len(classes) < 2:
        raise ManifestError(f"{train_manifest}: needs at least two labels to train, found {list(classes)}")
    check_known_labels(val_rows, classes, known_by="the training manifest")

    base = load_checkpoint(config.finetune) if config.finetune else None
    if base is not None:
        # The frozen layers only make sense on the features they were trained on.
        features, model_config = base.feature_config, replace(base.model_config, n_classes=len(classes))
    else:
        try:
            model_config = _model_config(config, features, len(classes))
        except ValueError as e:
            raise KwsError(f"invalid model settings: {e}") from None
    train_set = _load(train_rows, classes, features, config, reporter, "loading train")
    val_set = _load(val_rows, classes, features, config, reporter, "loading val")

    spotter = KeywordSpotter(features, model_config).to(device)
    if base is None:
        spotter.frontend.set_normalization(*_feature_stats(spotter, train_set, config.batch_size, device))
    else:
        reporter.log(_load_matching(spotter, base.state_dict, config.finetune))
    broadcast_parameters(spotter, process)
    trainable = _trainable_parameters(spotter, frozen=base is not None)
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    shuffle = torch.Generator().manual_seed(config.seed)
    augmentation, noise_files = _augmentation(augment, train_manifest, features.sample_rate, config.seed, reporter)
    # Its own stream, so switching augmentation on or off does not change the shuffling.
    # Each rank its own stream: the same draws on every rank would augment their clips alike.
    augment_rng = torch.Generator().manual_seed(config.seed + 0x5EED + 7919 * process.rank)
    if augmentation:
        reporter.log(f"augmentation: {augmentation!r}")

    provenance = {
        "kwsbatch_version": kwsbatch.__version__,
        "torch_version": str(torch.__version__),
        "train_manifest": str(train_manifest),
        "train_manifest_sha256": _sha256(train_manifest),
        "val_manifest": str(val_manifest) if val_manifest else None,
        "val_manifest_sha256": _sha256(val_manifest) if val_manifest else None,
        "train_config": asdict(config),
        "augment_config": augment.to_dict(),
        "noise_files": noise_files,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "skipped_unreadable": len(train_set.failures) + len(val_set.failures),
    }
    history: list[dict] = []
    best = {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf}
    start_epoch = 1
    if resume:
        start_epoch, history, best = _restore(run_dir / "last.pt", spotter, optimizer, scheduler, (shuffle, augment_rng), classes)
        if process.rank:  # last.pt holds rank 0's augmentation stream; the others start theirs afresh
            augment_rng.manual_seed(config.seed + 0x5EED + 7919 * process.rank + start_epoch)
        reporter.log(f"resuming {run_dir} at epoch {start_epoch}")

    counts = torch.bincount(train_set.targets, minlength=len(classes)).clamp(min=1).float()
    class_weights = (counts.sum() / (len(classes) * counts)).to(device) if config.balance == "weight" else None
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    stale = 0
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        _seed_gpu_dropout(device, config.seed, epoch, process.rank)
        lr = optimizer.param_groups[0]["lr"]
        # Every rank draws the same order from the same generator and trains on its share of it.
        order = rank_share(epoch_order(train_set.targets, counts, config.balance, shuffle), process)
        train_loss, train_acc = _train_epoch(
            spotter, train_set, order, optimizer, loss_fn, config, (augmentation, augment_rng), process, reporter, epoch
        )
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
        if improved and process.writes:
            save_checkpoint(checkpoint, run_dir / "best.pt")
        checkpoint.training_state = {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_state": shuffle.get_state(),
            "augment_state": augment_rng.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "history": history,
            "best": best,
        }
        if process.writes:
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
    temperature = _calibrate(run_dir / "best.pt", val_set, config.batch_size, device, reporter) if process.writes else 1.0
    return TrainResult(run_dir, best["epoch"], best["val_accuracy"], history, provenance["skipped_unreadable"], temperature)


def evaluate_clips(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model over a clip set."""
    logits, targets = clip_logits(spotter, clips, batch_size, device)
    n = max(len(clips), 1)
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum").item() if len(clips) else 0.0
    return loss / n, (logits.argmax(1) == targets).sum().item() / n


def clip_logits(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_clips, n_classes) logits on the CPU, in clip order, and the (n_clips,) targets."""
    spotter.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(clips)))
            outputs.append(_forward(spotter, clips, idx, device)[0].float().cpu())
    n_classes = spotter.head.config.n_classes
    return (torch.cat(outputs) if outputs else torch.zeros(0, n_classes)), clips.targets


def epoch_order(targets: torch.Tensor, counts: torch.Tensor, balance: str, shuffle: torch.Generator) -> torch.Tensor:
    """The clip indices of one epoch: a permutation, or as many class-balanced draws with replacement."""
    if balance != "sample":
        return torch.randperm(len(targets), generator=shuffle)
    return torch.multinomial(1.0 / counts[targets], len(targets), replacement=True, generator=shuffle)


def _train_epoch(spotter, clips: ClipSet, order, optimizer, loss_fn, config: TrainConfig, augment, process: Process, reporter, epoch):
    # Frozen layers stay in eval mode when fine-tuning, so not even their dropout moves.
    spotter.train(config.finetune is None)
    spotter.head.classifier.train()
    batches = list(torch.split(order, config.batch_size))
    total_loss, correct, seen = 0.0, 0, 0
    optimizer.zero_grad()
    trainable = [p for p in spotter.parameters() if p.requires_grad]
    reporter.start(f"epoch {epoch}/{config.epochs}", len(order))
    for step, idx in enumerate(batches, start=1):
        logits, targets = _forward(spotter, clips, idx, process.device, augment)
        loss = loss_fn(logits, targets)
        (loss / config.accumulate).backward()
        if step % config.accumulate == 0 or step == len(batches):
            average_gradients(trainable, process)
            optimizer.step()
            optimizer.zero_grad()
            hold("train-step")
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(idx)
        reporter.advance(len(idx), loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.1%}")
    reporter.stop()
    total_loss, correct, seen = sum_across([total_loss, correct, seen], process)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _forward(spotter: KeywordSpotter, clips: ClipSet, idx: torch.Tensor, device, augment=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets for clips idx; augment is (Augmentation, generator) when training."""
    waves, lengths = pad_waveforms([clips.waveforms[i] for i in idx.tolist()], min_samples=spotter.frontend.config.n_fft)
    waves, lengths = waves.to(device), lengths.to(device)
    if augment is None or not augment[0]:
        logits = spotter(waves, lengths)
    else:
        augmentation, generator = augment
        waves, lengths = augmentation.waveform(waves, lengths, generator)
        features, frame_lengths = spotter.frontend(waves, lengths)
        features, frame_lengths = augmentation.features(features, frame_lengths, generator)
        logits = spotter.head(features, frame_lengths)
    return logits, clips.targets[idx].to(device)


def default_noise_dir(train_manifest) -> Path:
    """Where background noise is looked for without --noise-dir: beside the training manifest."""
    return Path(train_manifest).parent / NOISE_DIR


def _augmentation(config: AugmentConfig, train_manifest, sample_rate: int, seed: int, reporter: Reporter) -> tuple[Augmentation, list[str]]:
    """The configured transforms, with the background noise read from disk when they need it."""
    noise, files = None, []
    if config.uses_noise:
        source = Path(config.noise_dir) if config.noise_dir else default_noise_dir(train_manifest)
        if source.exists():
            noise, files = load_noise(source, sample_rate)
        if not files:
            if config.noise_dir:
                raise KwsError(f"{source}: no readable audio files (or {NOISE_LABEL} rows) for background noise (--noise-dir)")
            reporter.warn(f"no {NOISE_DIR} folder with audio beside {train_manifest}: background noise is off (pass --noise-dir)")
            noise = None
    return config.build(sample_rate=sample_rate, noise=noise, seed=seed), files


def _calibrate(best_path: Path, val_set: ClipSet, batch_size: int, device, reporter: Reporter) -> float:
    """Fit the best model's temperature on the validation clips and store it in best.pt."""
    if not best_path.is_file():
        return 1.0
    checkpoint = load_checkpoint(best_path)
    logits, targets = clip_logits(checkpoint.build(device), val_set, batch_size, device)
    temperature = fit_temperature(logits, targets)
    before, after = calibration_error(logits, targets), calibration_error(logits, targets, temperature)
    checkpoint.temperature = temperature
    metrics = checkpoint.provenance.setdefault("metrics", {})
    metrics.update(temperature=temperature, val_ece_uncalibrated=round(before, 6), val_ece=round(after, 6))
    save_checkpoint(checkpoint, best_path)
    reporter.log(f"temperature {temperature:.3f} fitted on validation: expected calibration error {before:.3f} -> {after:.3f}")
    return temperature


def _trainable_parameters(spotter: KeywordSpotter, *, frozen: bool) -> list[nn.Parameter]:
    """All parameters, or with frozen=True only the classifier's (the rest stop needing gradients)."""
    if not frozen:
        return list(spotter.parameters())
    for name, parameter in spotter.named_parameters():
        parameter.requires_grad_(name.startswith("head.classifier."))
    return [p for p in spotter.parameters() if p.requires_grad]


def _load_matching(spotter: KeywordSpotter, state: dict[str, torch.Tensor], source) -> str:
    """Copy every tensor whose name and shape match; say what was loaded and what was skipped."""
    own = spotter.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    spotter.load_state_dict(matching, strict=False)
    skipped = [
        f"{k} {tuple(own[k].shape)} (checkpoint has {tuple(state[k].shape) if k in state else 'none'})"
        for k in own
        if k not in matching
    ]
    message = f"fine-tuning {source}: loaded {len(matching)} of {len(own)} tensors, training only the classifier"
    return message + (f"; skipped (newly initialised): {', '.join(skipped)}" if skipped else "")


def _feature_stats(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    stats = FeatureStats(spotter.frontend.config.n_mfcc)
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            waves, lengths = pad_waveforms(clips.waveforms[start : start + batch_size], min_samples=spotter.frontend.config.n_fft)
            stats.update(*spotter.frontend.raw(waves.to(device), lengths))
    mean, std = stats.mean_std()
    return mean.to(device), std.to(device)


def _read_splits(train_manifest, val_manifest, val_fraction, manifest_format=None) -> tuple[list[ManifestRow], list[ManifestRow]]:
    rows = read_manifest(train_manifest, require_label=True, manifest_format=manifest_format)
    if val_manifest is not None:
        return rows, read_manifest(val_manifest, require_label=True, manifest_format=manifest_format)
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
        conv_channels=config.conv_channels,
        conv_kernel=config.conv_kernel,
        conv_stride=config.conv_stride,
    )


def _restore(path: Path, spotter, optimizer, scheduler, generators, classes):
    checkpoint = load_checkpoint(path)
    state = checkpoint.training_state
    if state is None:
        raise KwsError(f"{path}: has no training state to resume from")
    if checkpoint.classes != classes:
        raise KwsError(f"{path}: was trained on classes {list(checkpoint.classes)}, this manifest has {list(classes)}")
    for what, theirs, ours in (
        ("model", checkpoint.model_config, spotter.head.config),
        ("feature", checkpoint.feature_config, spotter.frontend.config),
    ):
        if theirs != ours:
            diff = ", ".join(f"{k} {v!r} (now {getattr(ours, k)!r})" for k, v in asdict(theirs).items() if getattr(ours, k) != v)
            raise KwsError(f"{path}: was trained with other {what} settings: {diff}; resume with the run's own flags")
    spotter.load_state_dict(checkpoint.state_dict)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    shuffle, augment_rng = generators
    shuffle.set_state(state["shuffle_state"])
    if "augment_state" in state:  # absent from runs saved before augmentation existed
        augment_rng.set_state(state["augment_state"])
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
