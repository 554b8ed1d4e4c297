"""How many threads torch computes with: chosen from what the process was given and the kind of
model, not inherited.

torch's default is one thread per core of the machine. On a shared machine that is the wrong
choice for a model whose forward passes are short: each parallel region waits for its slowest
thread, and a thread sharing its core with another busy process is often descheduled. A kind of
generator says how many threads it computes on at most (`GeneratorKind.compute_threads`: one for
the world, whose UNet gains 1.08x from a second thread; see igmu/models/kinds.py); otherwise a
model uses every CPU the process may use: its CPU affinity, its cgroup's CPU quota and the
OMP_NUM_THREADS it was started with (Ray sets that to a task's CPU allocation). `IGMU_THREADS` (or
`igmu --threads`) overrides the choice. The BLAS pools numpy and scipy bring get the same limit
(threadpoolctl): left at every core, they cost a one-thread world run 25% beside a busy process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from igmu.errors import UsageError

THREADS_VARIABLE = "IGMU_THREADS"
# cgroup v2 and v1 files that hold a CPU quota.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def requested_threads() -> int | None:
    """The thread count IGMU_THREADS asks for, or None when it is not set."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{THREADS_VARIABLE}={text!r} is not a thread count; valid: a whole number >= 1, "
                         "or unset to let igmu choose")
    return int(text)


def usable_cpus() -> int:
    """The CPUs this process may compute on: the least of its affinity, its cgroup quota and the
    OMP_NUM_THREADS it was given."""
    limits = [_affinity_cpus()]
    quota = cgroup_cpu_quota()
    if quota:
        limits.append(quota)
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) >= 1:
        limits.append(int(given))
    return max(1, min(limits))


def chosen_threads(at_most: int | None = None) -> int:
    """The thread count for a model whose kind computes on `at_most` threads (None: no limit of its
    own, so as many as the process may use)."""
    requested = requested_threads()
    if requested is not None:
        return requested
    usable = usable_cpus()
    return usable if at_most is None else max(1, min(at_most, usable))


def use_threads(at_most: int | None = None) -> int:
    """Set torch's intra-op thread count (see `chosen_threads`), and the same limit on every other
    thread pool loaded (numpy's and scipy's BLAS, OpenMP); returns it."""
    import torch
    from threadpoolctl import threadpool_limits

    count = chosen_threads(at_most)
    threadpool_limits(limits=count)
    torch.set_num_threads(count)
    return count


def cgroup_cpu_quota(v2: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
                     v1_period: Path = CGROUP_V1_PERIOD) -> int | None:
    """Whole CPUs the cgroup's quota allows (rounded up), or None when it sets no quota."""
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        if v1_quota.is_file() and v1_period.is_file():
            quota = int(v1_quota.read_text())
            return None if quota <= 0 else max(1, math.ceil(quota / int(v1_period.read_text())))
    except (OSError, ValueError):
        return None  # an unreadable or odd file sets no limit we can honour
    return None


def _affinity_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
