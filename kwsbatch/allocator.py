"""Memory for batch-sized tensors: keep what the last batch freed for the next one (glibc's malloc)."""

from __future__ import annotations

import ctypes
import functools
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the most glibc allows: blocks up to this size come from the heap
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before any goes back to the OS


@functools.cache  # once per process: the CLI at its start, the loader engine for library callers
def keep_freed_memory() -> bool:
    """Tune glibc's malloc so that a batch's tensors reuse the memory the previous batch freed; False where it can't.

    By default glibc maps each block over 128 KB (a threshold it moves with use) from the OS afresh,
    hands it back on free, and trims the heap's top: the megabyte-sized tensors of every batch then
    fault their pages in again, batch after batch: 7,031 page faults for a training batch's
    augmentation, 228 tuned, and a training epoch 12% faster (docs/performance.md). The price is
    memory the process keeps after a peak, at most TRIM_THRESHOLD beyond what it uses. Loader
    workers, forked, inherit the setting. Nothing changes off Linux or on a C library without
    mallopt (musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    # The C library is already loaded: look mallopt up in the process itself (find_library would run ldconfig).
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
