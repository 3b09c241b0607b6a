"""Training across processes started by torchrun: who this process is, its share of each epoch, gradient sync.

``torchrun --nproc-per-node N -m kwsbatch train ...`` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK set. Each copy decodes the whole training set (train.py keeps clips in
memory), draws the same epoch order from the same seed, and trains on every N-th clip of it, as
torch's DistributedSampler would. Gradients are averaged across processes before each optimizer
step, so N processes with ``--batch-size B`` take the same steps as one with ``--batch-size N*B``.
Only rank 0 writes checkpoints and history.

Why gradients are averaged here rather than by wrapping the model in DistributedDataParallel:
training with augmentation runs the model's front end and head separately (the features are
augmented between them), and DDP only syncs what goes through its wrapper's forward. The model
is a few hundred kilobytes, so one all-reduce per step costs nothing next to the batch itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kwsbatch.errors import KwsError


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (and reports progress)."""
        return self.rank == 0


def join(device: torch.device) -> Process:
    """This process under torchrun (joining its process group), else the only process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Process(device=device)
    if device.type == "cuda":
        device = local_gpu(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), device)


def local_gpu(local_rank: int, gpus: int) -> torch.device:
    """This process's GPU: one per process on a node, so a node cannot run more processes than it has GPUs."""
    if local_rank >= gpus:
        raise KwsError(
            f"torchrun started process {local_rank} on a node with {gpus} GPU{'s' * (gpus != 1)}: "
            f"start one process per GPU (--nproc-per-node {gpus}), or train on the CPU with --device cpu"
        )
    return torch.device("cuda", local_rank)


def leave(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing best.pt
        dist.destroy_process_group()


def rank_share(order: torch.Tensor, process: Process) -> torch.Tensor:
    """This rank's clips of an epoch order: every world_size-th, after padding the order to a multiple of it.

    The padding (the first clips again) gives every rank the same number of batches, so the
    collective calls line up.
    """
    if not process.distributed:
        return order
    extra = -len(order) % process.world_size
    padded = torch.cat([order, order[:extra]]) if extra else order
    return padded[process.rank :: process.world_size]


def broadcast_parameters(model: nn.Module, process: Process) -> None:
    """Start every rank from rank 0's weights (and feature statistics)."""
    if process.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(parameters: list[nn.Parameter], process: Process) -> None:
    if not process.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= process.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across(values: list[float], process: Process) -> list[float]:
    """Element-wise sums over every rank (the values themselves when alone)."""
    if not process.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(tensor)
    return tensor.tolist()
