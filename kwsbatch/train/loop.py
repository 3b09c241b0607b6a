"""Training: manifests in, a run folder out (best.pt, last.pt, history.csv).

Clips are decoded once into memory by the loader's workers, from one manifest or several weighted
ones (sources.py); each epoch draws them by weight (or class-balanced) with a seeded generator and
cuts the draws into batches of like length (sampling.py), and the workers pad, augment
(augment.py) and featurise each batch while the LSTM trains on the one before (batches.py; on a
GPU augmentation and MFCCs run on the device). last.pt carries the optimizer, scheduler and
generator states, so ``resume=True`` continues exactly where a run stopped. At the end the best model's
softmax temperature is fitted on the validation clips (calibrate.py) and stored in best.pt.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

import kwsbatch
from kwsbatch.errors import KwsError, ManifestError
from kwsbatch.faults import hold
from kwsbatch.files.atomic import atomic_write, remove_stale_temporaries
from kwsbatch.files.loader import one_torch_thread, pad_waveforms
from kwsbatch.files.manifest import check_known_labels
from kwsbatch.files.tree import NOISE_FOLDER
from kwsbatch.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kwsbatch.model.config import ArchitectureConfig, FeatureConfig, ModelConfig
from kwsbatch.model.device import full_float32, resolve_device, to_device
from kwsbatch.model.features import FeatureStats
from kwsbatch.model.spotter import KeywordSpotter
from kwsbatch.progress import Reporter
from kwsbatch.settings import worker_count
from kwsbatch.train.augment import NOISE_LABEL, Augmentation, AugmentConfig, load_noise
from kwsbatch.train.batches import Prepared, batch_generator, epoch_batches
from kwsbatch.train.calibrate import calibration_error, fit_temperature
from kwsbatch.train.config import TrainConfig
from kwsbatch.train.data import ClipSet, load_clips
from kwsbatch.train.distributed import Process, average_gradients, broadcast_parameters, join, leave, rank_share, sum_across
from kwsbatch.train.sampling import epoch_order, epoch_size, group_by_length, loss_weights
from kwsbatch.train.sources import (
    TrainSource,
    as_list,
    as_sources,
    describe_sources,
    file_name,
    read_sources,
    sha256,
    source_names,
    sources_line,
)
from kwsbatch.train.warmstart import WarmStart

RUN_FILES = ("best.pt", "last.pt", "history.csv")  # what a run writes into its folder
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    skipped: int = 0
    temperature: float = 1.0


def train(
    train_manifest: str | Path | TrainSource | Sequence[str | Path | TrainSource],
    run_dir: str | Path,
    *,
    config: TrainConfig = TrainConfig(),
    model: ArchitectureConfig = ArchitectureConfig(),
    features: FeatureConfig = FeatureConfig(),
    augment: AugmentConfig | None = None,
    val_manifest: str | Path | Sequence[str | Path] | None = None,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
    manifest_format: str | None = None,
) -> TrainResult:
    """Train into run_dir; under torchrun, as one of WORLD_SIZE processes (distributed.py), rank 0 writing.

    train_manifest: one manifest, or several, each a path (weight 1) or a TrainSource with its
    weight. val_manifest: one or several; without it each training manifest gives up a slice.
    augment None is the bundled recipe, default_augmentation(): the standard preset, with background
    noise only when the (first) training manifest's folder has some. A run_dir that holds anything
    is refused unless resume (continue the run in it) or force (start over: its best.pt, last.pt
    and history.csv are removed first).
    """
    sources, val_manifests = as_sources(train_manifest), as_list(val_manifest)
    process = join(resolve_device(device))
    check_run_dir(run_dir, resume=resume, force=force, writes=process.writes)
    _reproducible_on(process.device)
    augment = default_augmentation(sources[0].manifest) if augment is None else augment
    result = _train(
        sources, run_dir, config=config, model=model, features=features, augment=augment, val_manifest=val_manifests,
        process=process, resume=resume, reporter=reporter if process.writes else None, manifest_format=manifest_format,
    )
    leave(process)
    return result


def check_run_dir(run_dir: str | Path, *, resume: bool, force: bool, writes: bool = True) -> None:
    """Refuse to train over an earlier run by accident: a folder that holds anything needs resume or force."""
    run_dir = Path(run_dir)
    if resume and force:
        raise KwsError("--resume continues the run in the folder and --force replaces it: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise KwsError(f"{run_dir}: is a file, not a run folder")
    for name in RUN_FILES:
        remove_stale_temporaries(run_dir / name)  # left by a killed run's atomic writes
    held = sorted(entry.name for entry in os.scandir(run_dir)) if run_dir.is_dir() else []
    if held and not resume and not force:
        listed = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise KwsError(
            f"{run_dir}: run folder is not empty ({listed}); pass --resume to continue the run in it, "
            "or --force to start over (replacing its best.pt, last.pt and history.csv)"
        )
    if force and writes:  # under torchrun, only rank 0 touches the run folder
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)


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


@dataclass
class _RunData:
    """What a run trains on: the sources, the classes, the decoded clips and each clip's weight."""

    sources: list[TrainSource]
    val_manifests: list
    classes: tuple[str, ...]
    start: WarmStart | None
    features: FeatureConfig
    model_config: ModelConfig
    train: ClipSet
    val: ClipSet
    weights: torch.Tensor  # (n_train_clips,) float64: each clip's source weight

    def val_names(self) -> list[str]:
        """Names of the validation sources, which val.sources index."""
        return source_names(self.val_manifests or [s.manifest for s in self.sources])

    def describe_sources(self) -> list[dict]:
        return describe_sources(self.sources, self.train.sources, None if self.val_manifests else self.val.sources, self.weights)


def _read_data(sources, val_manifests, config: TrainConfig, model: ArchitectureConfig, features: FeatureConfig, manifest_format,
               reporter: Reporter) -> _RunData:
    """The rows of every source and validation manifest, their classes, the run's settings and the clips decoded into memory."""
    rows = read_sources(sources, val_manifests, config.val_fraction, manifest_format)
    classes = tuple(sorted({r.label for r in rows.train}))
    if len(classes) < 2:
        raise ManifestError(f"{' and '.join(s.manifest for s in sources)}: needs at least two labels to train, found {list(classes)}")
    check_known_labels(rows.val, classes, known_by="the training manifest" if len(sources) == 1 else "the training manifests")
    start = _warm_start(config)
    features, model_config = _settings(model, features, len(classes), start, reporter)
    train_set = _load(rows.train, rows.train_sources, classes, features, config, reporter, "loading train")
    val_set = _load(rows.val, rows.val_sources, classes, features, config, reporter, "loading val")
    weights = torch.tensor([s.weight for s in sources], dtype=torch.float64)[train_set.sources]
    data = _RunData(sources, val_manifests, classes, start, features, model_config, train_set, val_set, weights)
    if len(sources) > 1 or sources[0].weight != 1:
        reporter.log(sources_line(data.describe_sources(), epoch_size(weights)))
    return data


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""

    config: TrainConfig
    process: Process
    run_dir: Path
    data: _RunData
    spotter: KeywordSpotter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    augmentation: Augmentation
    augment_rng: torch.Generator  # its own stream, so switching augmentation on or off does not change the shuffling
    provenance: dict
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf})


def _train(
    train_manifest, run_dir, *, config: TrainConfig, model: ArchitectureConfig, features: FeatureConfig, augment: AugmentConfig, val_manifest,
    process: Process, resume: bool, reporter: Reporter | None, manifest_format: str | None,
) -> TrainResult:
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    if resume and not any((run_dir / name).exists() for name in ("last.pt", "history.csv")):
        # Killed before its first epoch ended (while decoding, say): the same --resume command starts over.
        reporter.log(f"nothing to resume in {run_dir} (no epoch finished yet): starting at epoch 1")
        resume = False
    torch.manual_seed(config.seed)
    run = _start_run(train_manifest, val_manifest, run_dir, config, model, features, augment, process, reporter, manifest_format)
    start_epoch = 1
    if resume:
        start_epoch, run.history, run.best = _restore(
            run_dir / "last.pt", run.spotter, run.optimizer, run.scheduler, (run.shuffle, run.augment_rng), run.data.classes
        )
        if process.rank:  # last.pt holds rank 0's augmentation stream; the others start theirs afresh
            run.augment_rng.manual_seed(config.seed + 0x5EED + 7919 * process.rank + start_epoch)
        reporter.log(f"resuming {run_dir} at epoch {start_epoch}")
    _train_epochs(run, start_epoch, reporter)
    temperature = _calibrate(run_dir / "best.pt", run.data, config.batch_size, process.device, reporter) if process.writes else 1.0
    best = run.best
    return TrainResult(run_dir, best["epoch"], best["val_accuracy"], run.history, run.provenance["skipped_unreadable"], temperature)


def _start_run(sources, val_manifests, run_dir: Path, config: TrainConfig, model: ArchitectureConfig, features: FeatureConfig,
               augment: AugmentConfig, process: Process, reporter: Reporter, manifest_format: str | None) -> _Run:
    """The clips in memory, the model (new, or a checkpoint's), its optimizer and the run's generators."""
    data = _read_data(sources, val_manifests, config, model, features, manifest_format, reporter)
    spotter = KeywordSpotter(data.features, data.model_config).to(process.device)
    if data.start is None:
        spotter.frontend.set_normalization(*_feature_stats(spotter, data.train, config.batch_size, process.device))
    else:  # its normalisation too: the run begins from exactly the checkpoint's model
        reporter.log(data.start.load_into(spotter, data.classes))
    broadcast_parameters(spotter, process)
    trainable = _trainable_parameters(spotter, frozen=config.finetune is not None)
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    shuffle = torch.Generator().manual_seed(config.seed)
    augmentation, noise_files = _augmentation(augment, data.sources[0].manifest, data.features.sample_rate, config.seed, reporter)
    # Each rank its own stream: the same draws on every rank would augment their clips alike.
    augment_rng = torch.Generator().manual_seed(config.seed + 0x5EED + 7919 * process.rank)
    if augmentation:
        reporter.log(f"augmentation: {augmentation!r}")
    provenance = _provenance(data, config, augment, noise_files)
    return _Run(config, process, run_dir, data, spotter, optimizer, scheduler, shuffle, augmentation, augment_rng, provenance)


def _provenance(data: _RunData, config: TrainConfig, augment: AugmentConfig, noise_files) -> dict:
    """What a checkpoint records of how it was made: names and content hashes, never the training machine's paths."""
    return {
        "kwsbatch_version": kwsbatch.__version__,
        "torch_version": str(torch.__version__),
        "train_manifest": " ".join(file_name(s.manifest) + ("" if s.weight == 1 else f":{s.weight:g}") for s in data.sources),
        "train_manifest_sha256": sha256(data.sources[0].manifest) if len(data.sources) == 1 else None,
        "val_manifest": " ".join(file_name(m) for m in data.val_manifests) or None,
        "val_manifest_sha256": sha256(data.val_manifests[0]) if len(data.val_manifests) == 1 else None,
        "train_sources": data.describe_sources(),
        "started_from": data.start.provenance() if data.start else None,
        "train_config": _recorded_config(config, data.start),
        "augment_config": {**augment.to_dict(), "noise_dir": file_name(augment.noise_dir)},
        "noise_files": noise_files,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "skipped_unreadable": len(data.train.failures) + len(data.val.failures),
    }


def _train_epochs(run: _Run, start_epoch: int, reporter: Reporter) -> None:
    """Epochs from start_epoch on, saving best.pt, last.pt and history.csv after each; stop early when patience runs out."""
    config, device, data = run.config, run.process.device, run.data
    class_weights = loss_weights(data.train.targets, data.weights, len(data.classes)).to(device) if config.balance == "weight" else None
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    stale = 0
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        _seed_gpu_dropout(device, config.seed, epoch, run.process.rank)
        lr = run.optimizer.param_groups[0]["lr"]
        # Every rank draws the same order from the same generator and trains on every world_size-th
        # clip of it, so each run of world_size * batch_size clips of like length gives every rank its batch.
        order = epoch_order(data.train.targets, data.weights, config.balance, run.shuffle)
        order = group_by_length(order, data.train.lengths, config.batch_size * run.process.world_size, config.length_groups)
        order = rank_share(order, run.process)
        train_loss, train_acc = train_epoch(
            run.spotter, data.train, order, run.optimizer, loss_fn, config, (run.augmentation, run.augment_rng), run.process, reporter, epoch
        )
        val_loss, val_acc = evaluate_clips(run.spotter, data.val, config.batch_size, device)
        run.scheduler.step()
        row = dict(epoch=epoch, train_loss=round(train_loss, 6), train_accuracy=round(train_acc, 6), val_loss=round(val_loss, 6),
                   val_accuracy=round(val_acc, 6), lr=lr, seconds=round(time.perf_counter() - started, 2))
        improved = _save_epoch(run, row, val_loss, val_acc)
        reporter.log(
            f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.2%}  "
            f"val loss {val_loss:.4f} acc {val_acc:.2%}  lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
        )
        stale = 0 if improved else stale + 1
        if config.patience and stale >= config.patience:
            reporter.log(f"early stop: no better validation accuracy for {config.patience} epochs")
            break


def _save_epoch(run: _Run, row: dict, val_loss: float, val_acc: float) -> bool:
    """Record an epoch's history row; write best.pt when it improved, and last.pt with all a --resume needs."""
    epoch = row["epoch"]
    run.history.append(row)
    improved = (val_acc, -val_loss) > (run.best["val_accuracy"], -run.best["val_loss"])
    if improved:
        run.best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss}
    metrics = {"best_epoch": run.best["epoch"], "best_val_accuracy": run.best["val_accuracy"], "epoch": epoch, **row}
    checkpoint = Checkpoint(
        classes=run.data.classes,
        feature_config=run.data.features,
        model_config=run.spotter.head.config,
        state_dict=run.spotter.state_dict(),
        provenance={**run.provenance, "created": _now(), "metrics": metrics},
    )
    if improved and run.process.writes:
        save_checkpoint(checkpoint, run.run_dir / "best.pt")
    checkpoint.training_state = {
        "epoch": epoch,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "shuffle_state": run.shuffle.get_state(),
        "augment_state": run.augment_rng.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "history": run.history,
        "best": run.best,
    }
    if run.process.writes:
        save_checkpoint(checkpoint, run.run_dir / "last.pt")
        _write_history(run.run_dir / "history.csv", run.history)
    return improved


def evaluate_clips(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model over a clip set."""
    logits, targets = clip_logits(spotter, clips, batch_size, device)
    n = max(len(clips), 1)
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum").item() if len(clips) else 0.0
    return loss / n, (logits.argmax(1) == targets).sum().item() / n


def clip_logits(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_clips, n_classes) logits on the CPU, in clip order, and the (n_clips,) targets.

    On a GPU the batches queue up on the device and come back in one copy at the end, as label's do.
    """
    spotter.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            waves, lengths = pad_waveforms(clips.waveforms[start : start + batch_size], min_samples=spotter.frontend.config.n_fft)
            outputs.append(spotter(to_device(waves, device), lengths).float())
    n_classes = spotter.head.config.n_classes
    return (torch.cat(outputs).cpu() if outputs else torch.zeros(0, n_classes)), clips.targets


def train_epoch(spotter, clips: ClipSet, order, optimizer, loss_fn, config: TrainConfig, augment, process: Process, reporter=None, epoch=1):
    """One pass over order: (mean loss, accuracy); augment is (Augmentation, generator), the generator drawing this epoch's seed.

    Losses and hits add up on the device, read once at the end: on a GPU, no host synchronisation per batch.
    """
    # Frozen layers stay in eval mode when fine-tuning, so not even their dropout moves.
    spotter.train(config.finetune is None)
    spotter.head.classifier.train()
    augmentation, generator = augment
    seed = int(torch.randint(2**62, (), generator=generator))
    steps = -(-len(order) // config.batch_size)
    total_loss = torch.zeros((), device=process.device)
    correct = torch.zeros((), dtype=torch.long, device=process.device)
    optimizer.zero_grad()
    trainable = [p for p in spotter.parameters() if p.requires_grad]
    reporter = reporter or Reporter()
    reporter.start(f"epoch {epoch}/{config.epochs}", len(order))
    batches = epoch_batches(spotter, clips, order, config.batch_size, augmentation, seed, process.device, worker_count(config.jobs))
    with one_torch_thread(process.device):
        for step, idx, prepared in batches:
            logits = _train_logits(spotter, prepared, augmentation, batch_generator(seed, step), process.device)
            targets = to_device(clips.targets[idx], process.device)
            loss = loss_fn(logits, targets)
            (loss / config.accumulate).backward()
            if (step + 1) % config.accumulate == 0 or step + 1 == steps:
                average_gradients(trainable, process)
                optimizer.step()
                optimizer.zero_grad()
                hold("train-step")
            total_loss += loss.detach() * len(idx)
            correct += (logits.argmax(1) == targets).sum()
            seen = min(len(order), (step + 1) * config.batch_size)
            # The running figures cost a host synchronisation: on the CPU only.
            shown = {"loss": f"{total_loss.item() / seen:.3f}", "acc": f"{correct.item() / seen:.1%}"} if process.device.type == "cpu" else {}
            reporter.advance(len(idx), **shown)
    reporter.stop()
    total_loss, correct, seen = sum_across([total_loss.item(), correct.item(), len(order)], process)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _train_logits(spotter: KeywordSpotter, prepared: Prepared, augmentation, generator: torch.Generator, device) -> torch.Tensor:
    """Logits of a prepared batch: its features into the head, or on a GPU its waveforms augmented and featurised there."""
    if prepared.featurized:
        return spotter.head(*prepared.inputs)
    waves, lengths = prepared.inputs
    waves = waves.to(device, non_blocking=True)
    if not augmentation:
        return spotter(waves, lengths)
    # Lengths stay on the host through augmentation and features: only the waveforms live on the device.
    return spotter.head(*augmentation.featurize(spotter.frontend, waves, lengths, generator))


def default_augmentation(train_manifest) -> AugmentConfig:
    """The bundled recipe: AugmentConfig() (the standard preset), without background noise when there is none
    beside the training manifest; asking for noise explicitly (AugmentConfig()) warns when there is none."""
    config = AugmentConfig()
    if default_noise_dir(train_manifest).is_dir():
        return config
    return replace(config, noise=(0.0, *config.noise[1:]))


def default_noise_dir(train_manifest) -> Path:
    """Where background noise is looked for without --noise-dir: beside the training manifest, or in the tree trained on."""
    path = Path(train_manifest)
    return (path if path.is_dir() else path.parent) / NOISE_FOLDER


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
            reporter.warn(f"no {NOISE_FOLDER} folder with audio beside {train_manifest}: background noise is off (pass --noise-dir)")
            noise = None
    return config.build(sample_rate=sample_rate, noise=noise, seed=seed), files


def _calibrate(best_path: Path, data: _RunData, batch_size: int, device, reporter: Reporter) -> float:
    """Fit the best model's temperature on the validation clips and store it in best.pt, with
    the best model's validation accuracy on each source when there are several."""
    if not best_path.is_file():
        return 1.0
    checkpoint = load_checkpoint(best_path)
    val_set, val_names = data.val, data.val_names()
    logits, targets = clip_logits(checkpoint.build(device), val_set, batch_size, device)
    temperature = fit_temperature(logits, targets)
    before, after = calibration_error(logits, targets), calibration_error(logits, targets, temperature)
    checkpoint.temperature = temperature
    metrics = checkpoint.provenance.setdefault("metrics", {})
    metrics.update(temperature=temperature, val_ece_uncalibrated=round(before, 6), val_ece=round(after, 6))
    if len(val_names) > 1:
        correct = logits.argmax(1) == targets
        by_source = {name: correct[val_set.sources == i].float() for i, name in enumerate(val_names)}
        by_source = {name: (c.mean().item(), len(c)) for name, c in by_source.items() if len(c)}
        metrics["val_accuracy_by_source"] = {name: round(accuracy, 6) for name, (accuracy, _) in by_source.items()}
        listed = ", ".join(f"{name} {accuracy:.2%} ({n} clips)" for name, (accuracy, n) in by_source.items())
        reporter.log(f"best model on validation, by source: {listed}")
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


def _feature_stats(spotter: KeywordSpotter, clips: ClipSet, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    stats = FeatureStats(spotter.frontend.config.n_mfcc)
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            waves, lengths = pad_waveforms(clips.waveforms[start : start + batch_size], min_samples=spotter.frontend.config.n_fft)
            stats.update(*spotter.frontend.raw(waves.to(device), lengths))
    mean, std = stats.mean_std()
    return mean.to(device), std.to(device)


def _load(rows, sources, classes, features: FeatureConfig, config: TrainConfig, reporter: Reporter, description: str) -> ClipSet:
    clips = load_clips(rows, classes, features.sample_rate, sources=sources, jobs=config.jobs, reporter=reporter, description=description)
    for row, reason in clips.failures[:5]:
        reporter.warn(f"skipping {row.source}: {reason}")
    if len(clips.failures) > 5:
        reporter.warn(f"... and {len(clips.failures) - 5} more unreadable clips skipped")
    if not len(clips):
        raise KwsError(f"{description}: none of the {len(rows)} clips could be read")
    return clips


def _warm_start(config: TrainConfig) -> WarmStart | None:
    """The checkpoint named by init or finetune, if any."""
    path = config.init or config.finetune
    return WarmStart(load_checkpoint(path), every_layer=bool(config.init)) if path else None


def _settings(model: ArchitectureConfig, features: FeatureConfig, n_classes: int, start: WarmStart | None, reporter: Reporter):
    """The run's feature and model settings: a starting checkpoint's (with the run's dropout), else from the configs."""
    model_config = model.for_data(n_classes, features.n_mfcc)
    if start is None:
        return features, model_config
    ignored = start.ignored_settings(features, model_config)
    if ignored:
        reporter.log(ignored)
    return start.settings(n_classes, model.dropout)


def _recorded_config(config: TrainConfig, start: WarmStart | None) -> dict:
    """The config for provenance, with a starting checkpoint named by its model id: a path names one machine's file."""
    recorded = asdict(config)
    if start is not None:
        recorded["init" if start.every_layer else "finetune"] = start.model_id
    return recorded


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
