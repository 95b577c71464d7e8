"""The C allocator told to give big blocks back to the system as soon as they are freed.

The bulk stages pass megabyte-sized buffers between threads (a chunk of results as JSON, a
request body, a file's block). glibc raises its mmap threshold to the size of the largest such
block once one is freed, after which those blocks come from the heap arenas instead of their own
mappings; freed there, they leave holes that the next, slightly different sizes do not fit, and
the daemon's resident size climbs with every chunk although no Python object is kept (the push to
the core grew it by ~50 MB at a million results). Fixing the thresholds at glibc's own defaults
turns that adjustment off: a block of 128 KiB or more is mapped and unmapped on its own, and the
heap is trimmed above 128 KiB free. Nothing changes where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1   # malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def fix_thresholds() -> bool:
    """mallopt both thresholds (which also stops glibc adjusting them); False if not glibc."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
