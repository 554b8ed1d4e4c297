"""Keep freed memory in a judge replica's heap instead of handing it back to the OS.

glibc serves allocations above its mmap threshold (128 KiB at start) with fresh `mmap` pages and
returns heap memory above its trim threshold to the OS on `free`; both thresholds then adapt to what
the process frees. A judge forward allocates and frees a few MiB of activations per chunk, and until
(or unless) the thresholds catch up, every forward page-faults its activations in again. Measured in
a replica on the 2-core development box (docs/benchmarks.md, "Judges on Ray Serve"):
- 32-image chunks: 140,000 to 230,000 minor faults per 1024 images, round after round, and a forward
  1.5 to 2 times slower than in a process whose heap had already grown;
- 8-image chunks: 99,000, then 43,000, then 9,000 faults in the first three rounds of 1024 images.
With the freed memory kept: 2,193, 174, 263 faults (32-image chunks) and 500, 56, 154 (8-image chunks).

Only glibc has `mallopt`; elsewhere (macOS, musl) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MIB = 1024 * 1024
# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses larger mmap thresholds on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX, mallopt(3)).
MAX_MMAP_THRESHOLD_MIB = 32


def retain_freed_memory(megabytes: int) -> bool:
    """Serve allocations up to min(megabytes, 32) MiB from the heap and keep up to `megabytes` MiB of
    freed heap for reuse. 0 leaves the allocator alone. True when the setting took effect."""
    if megabytes <= 0:
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    mmap_ok = mallopt(M_MMAP_THRESHOLD, min(megabytes, MAX_MMAP_THRESHOLD_MIB) * MIB)
    trim_ok = mallopt(M_TRIM_THRESHOLD, megabytes * MIB)
    return bool(mmap_ok and trim_ok)


def _glibc_mallopt():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc: no mallopt to call
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
