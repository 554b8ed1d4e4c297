"""How many threads torch computes with: chosen from what the process was given and the model's
size, not inherited.

torch's default is one thread per core of the machine. On a shared machine that is the wrong
choice for a small model: each parallel region waits for its slowest thread, and a thread that
shares its core with another busy process is often descheduled. Measured on 2 cores
(docs/benchmarks.md, bench/threads.py), a short SalUn run on the world model took 1.7x longer at
two threads than at one with a busy process beside it, while two threads saved only about 5% on a
quiet machine. So a model below `SMALL_MODEL_PARAMETERS` computes on one thread; a larger one uses
every CPU the process may use: its CPU affinity, its cgroup's CPU quota and the OMP_NUM_THREADS
it was started with (Ray sets that to a task's CPU allocation). `IGMU_THREADS` (or a command's
`--threads`) overrides the choice. The BLAS pools numpy and scipy bring get the same limit
(threadpoolctl): left at every core, they cost a one-thread run 25% beside a busy process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from igmu.errors import UsageError

THREADS_VARIABLE = "IGMU_THREADS"
# The world model (2.8M UNet parameters) sits far below this and SD 1.4 (860M) far above; where
# between them a second thread starts to pay is not measured, so the line is drawn where the largest
# model measured to gain little from it (the world's) is an order of magnitude away.
SMALL_MODEL_PARAMETERS = 30_000_000
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


def chosen_threads(parameters: int | None = None) -> int:
    """The thread count for computing with a model of `parameters` parameters (None: unknown, so
    as many as the process may use)."""
    requested = requested_threads()
    if requested is not None:
        return requested
    if parameters is not None and parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return usable_cpus()


def use_threads(parameters: int | None = None) -> int:
    """Set torch's intra-op thread count for a model of `parameters` parameters, and the same limit
    on every other thread pool loaded (numpy's and scipy's BLAS, OpenMP); returns it."""
    import torch
    from threadpoolctl import threadpool_limits

    count = chosen_threads(parameters)
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
