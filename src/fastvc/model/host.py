"""Host-memory settings for running the model on a CPU.

    keep_freed_memory() -> bool     glibc keeps freed blocks for reuse instead of handing them back to the kernel
    native_convolutions()           a context: CPU convolutions without oneDNN (faster for narrow ones)

PyTorch's CPU allocator asks malloc for every tensor and frees it when the tensor dies. glibc serves blocks
above its mmap threshold (128 KiB at start, adapting up to 32 MiB) with fresh `mmap`s and trims the heap top
back to the kernel once it exceeds the trim threshold, so a block's activations of a few MiB each were page
faults again on every forward: measured with the tiny preset at 16 streams, 1.1 M page faults and 2/3 of the
sampler's time (sampler 476 ms -> 266 ms a batch once blocks are kept). Keeping freed memory costs at most
`TRIM_THRESHOLD_BYTES` of idle heap per malloc arena.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from collections.abc import Iterator

import structlog
import torch

log = structlog.get_logger("fastvc.model.host")

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed: blocks up to this come from the heap
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024  # idle heap a malloc arena keeps before returning memory


def keep_freed_memory() -> bool:
    """Tune glibc malloc for tensor-sized blocks (process-wide, idempotent). False where libc is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.debug("host.malloc_tuned", ok=ok, mmap_threshold_bytes=MMAP_THRESHOLD_BYTES,
              trim_threshold_bytes=TRIM_THRESHOLD_BYTES)
    return ok


@contextlib.contextmanager
def native_convolutions() -> Iterator[None]:
    """CPU convolutions inside run on PyTorch's native kernels, not oneDNN, whose fixed cost per call (~40 us)
    dominates narrow convolutions. Process-wide while it lasts (the model runs on one worker thread)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
