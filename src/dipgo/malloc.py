"""Keep freed activation memory in the process on glibc, so CPU sampling does not page-fault on every call.

glibc hands large freed blocks back to the kernel (``munmap`` above the mmap threshold, ``trim`` of the
heap top above the trim threshold). A denoiser call frees megabytes of activations and the next call
asks for them again, so every call re-faults its pages in; on a small model at CPU batch sizes these minor
page faults can be a large share of the wall time (docs/results.md, wall clock). The cost also falls unevenly
on skip schedules: a call that reuses its blocks frees little, so the heap shrinks between computed
calls and the next computed call pays for the faults again.

:func:`tune_malloc` raises both thresholds (the mmap one to glibc's 32 MiB maximum, the trim one to
1 GiB), which is the same advice PyTorch's CPU performance guides give as "use jemalloc/tcmalloc". It
changes no results, only where freed memory goes. The CLI calls it; set ``DIPGO_MALLOC=system`` to keep
the C library's defaults. Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: dict | None = None


def tune_malloc() -> dict | None:
    """Raise glibc's mmap and trim thresholds for this process; returns what was set, or ``None`` where
    it does not apply (not glibc, or ``DIPGO_MALLOC=system``). Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("DIPGO_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt is a no-op
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    _applied = {"allocator": "glibc", "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return _applied


def malloc_settings() -> dict | None:
    """What :func:`tune_malloc` set in this process (``None`` if nothing), for benchmark records."""
    return _applied
