"""Hand freed memory back to the OS, so a process that reloads models stays at the size of what it serves.

glibc raises its mmap threshold (up to 32 MiB) and trim threshold (to twice that) the first time a large
block is freed. After that, the blocks ONNX Runtime loads a model into and the activations it runs with
come from malloc's heaps, and each thread's heap keeps free space at its top that ``malloc_trim`` does
not touch. Fixing the thresholds at start keeps large blocks mapped on their own, so freeing them unmaps
them. Measured with the one-worker soak that reloads every 20 s (RELIABILITY.md, "Soak"): the default
model's RSS peaks grew 5.1% in 4 minutes with glibc's defaults, 3.3% with the thresholds fixed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks from 256 KiB up (model weights, large activations) are mapped on their own and unmapped when
# freed; a heap gives back free space above 1 MiB at its top.
MMAP_THRESHOLD_BYTES = 256 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024
# Where any of these is set, the operator tuned malloc: leave it as they set it.
OPERATOR_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _libc() -> ctypes.CDLL:
    """The C library already loaded into this process (no search on disk for it)."""
    return ctypes.CDLL(None)


def fix_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds (which also stops it raising them). Call once per process,
    before a model is loaded. Returns whether they were set: not without glibc, nor where the
    environment already tunes malloc."""
    if any(name in os.environ for name in OPERATOR_TUNING):
        log.info("malloc: thresholds left as the environment sets them")
        return False
    libc = _libc()
    if not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def return_freed_memory() -> None:
    """Hand the memory of an unloaded model back to the OS: free what only reference cycles still hold
    (an exception's traceback from a request that used the model keeps its frames, and through them
    the model, until the cyclic collector's next full pass: in the soak that was up to a minute, two
    models' worth of RSS), then ask glibc to release its free pages (it keeps them for reuse
    otherwise). The collection runs with or without glibc."""
    gc.collect()
    libc = _libc()
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
