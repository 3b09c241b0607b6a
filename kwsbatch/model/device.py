"""Where the model runs: the device a name means, and the numerics we hold it to."""

from __future__ import annotations

import torch

from kwsbatch.errors import KwsError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KwsError("--device cuda: no CUDA device is available (try --device cpu or auto)")
    return torch.device(name)


def full_float32(device: torch.device) -> None:
    """Run cuDNN's float32 convolutions and LSTMs in float32, not TF32 (process-wide).

    cuDNN uses TF32, a 10-bit mantissa, by default on recent GPUs: on an H200 a clip's confidence
    moved by up to 1.6e-4 with the other clips in its batch, so a file's row depended on which
    files were labelled with it. The model is small, and labelling on a GPU is bound by decoding.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (lengths, augmentation parameters, targets, a validation batch) on device,
    without the host waiting for the device.

    A copy from pageable memory may wait for the work queued on the device; from pinned memory
    it is queued behind that work instead. Pinning copies the tensor once more on the host, which
    for the large ones the loader has not pinned already is what a pageable copy's staging costs too.
    """
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
