"""Keep freed memory in the process, so training steps stop paying page faults.

glibc's ``malloc`` serves large requests (above its *mmap threshold*) with fresh ``mmap``
pages and hands them back to the kernel on ``free``. A training step allocates and frees the
same few-megabyte activation buffers every iteration, so every step faults all of them in
again, page by page, and the kernel zeroes each page first: on ResNet-20 at batch 128 that is
2,000-4,600 page faults per step eagerly and 22,000-24,000 per step under ``torch.compile``
(measured with ``getrusage``, ``benchmarks/train_step.py``), 10-27% of the step time on our 2-core CPUs.

:func:`keep_freed_memory` raises the mmap threshold to its maximum (32 MiB on 64-bit glibc) and
the trim threshold to 1 GiB through ``mallopt``, which is what the environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` do at start-up: freed buffers are then
reused by the next step with no fault at all. The cost is that the process keeps up to that
much freed memory instead of returning it to the system. On other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit (4 * 1024 * 1024 * sizeof(long))
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (see the module docstring); True if it agreed,
    False on a C library without ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
