"""An epoch's batches, prepared by the loader's workers while the main process trains on the one before.

Clips are decoded once per run and stay in memory (data.py); what an epoch then spends outside
the model's forward and backward pass is padding, augmentation and features, about half of it on
the CPU. So on the CPU a worker does all of that: it pads a batch's clips, augments the waveforms,
computes their MFCCs and masks those, and the main process runs only the LSTM. On a GPU a worker
only pads (into pinned memory), and augmentation and features run batched on the device, where
they cost little. Each batch draws its augmentation from a generator of its own, seeded from the
epoch's seed and the batch's step: the draws do not depend on which worker prepares the batch, on
how many workers there are, or on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import torch

from kwsbatch.files.loader import pad_waveforms, run_tasks
from kwsbatch.model.spotter import KeywordSpotter
from kwsbatch.train.augment import Augmentation
from kwsbatch.train.data import ClipSet


class Prepared(NamedTuple):
    """A batch ready for the model: its features (prepared on the CPU), or its padded waveforms (pinned by the loader for a GPU)."""

    inputs: tuple[torch.Tensor, torch.Tensor]  # (features, frame_lengths), or (waves, lengths) when featurized is False
    featurized: bool


def epoch_batches(
    spotter: KeywordSpotter,
    clips: ClipSet,
    order: torch.Tensor,
    batch_size: int,
    augmentation: Augmentation,
    seed: int,
    device: torch.device,
    workers: int,
) -> Iterator[tuple[int, torch.Tensor, Prepared]]:
    """(step, clip indices, Prepared) for each batch of order, prepared in `workers` loader worker processes.

    A batch not featurized draws its augmentation on the device from batch_generator(seed, step).
    """
    on_cpu = device.type == "cpu"
    prepare = functools.partial(
        _prepare,
        clips.waveforms,
        spotter.frontend.config.n_fft,
        spotter.frontend if on_cpu else None,
        augmentation if on_cpu else None,
        seed,
    )
    batches = enumerate(torch.split(order, batch_size))
    for (step, idx), prepared in run_tasks(batches, prepare, workers=workers, died=_worker_died, pin_memory=not on_cpu):
        yield step, idx, prepared


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + 7919 * step)


def _prepare(waveforms, n_fft: int, frontend, augmentation: Augmentation | None, seed: int, task) -> Prepared:
    """In a worker: pad a batch, and on the CPU augment it and compute its features."""
    step, idx = task
    inputs = pad_waveforms([waveforms[i] for i in idx.tolist()], min_samples=n_fft)
    if frontend is None:
        return Prepared(inputs, False)
    with torch.no_grad():
        inputs = augmentation.featurize(frontend, *inputs, batch_generator(seed, step)) if augmentation else frontend(*inputs)
    return Prepared(inputs, True)


def _worker_died(task) -> str:
    return "a loader worker process died while preparing a training batch; run again with --resume to continue from the last epoch"
