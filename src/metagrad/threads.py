"""How many CPU threads a run gives torch: the CPUs this process may use, and the work's size.

torch's default is one thread per core of the machine. That is wrong in three common cases,
measured in docs/performance.md: a container with a CPU quota sees every host core; a process
pinned to some cores (taskset, a scheduler) sees them all too; and on a busy machine each
operator that enters the thread pool waits for the other threads to be scheduled (the default
`metagrad train` ran at 12.9 it/s with two threads and 94-153 it/s with one). So:

* usable CPUs = this process's affinity mask, capped by its cgroup CPU quota, shared among the
  processes of a torchrun node (``LOCAL_WORLD_SIZE``);
* small work (fewer than SMALL_WORK input values per meta-batch, e.g. sinusoid regression):
  one thread, which nothing measured has beaten on such sizes;
* otherwise the usable CPUs not already busy (1-minute load average), at least one.

``train.threads = N`` (or the environment variable ``OMP_NUM_THREADS``) overrides the choice.
``metagrad train`` and ``metagrad eval`` both apply it (``use_threads``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

#: per-meta-batch input values below which one thread is used (sine: 500; Omniglot 5w1s: ~2e6)
SMALL_WORK = 100_000


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: affinity, cgroup quota, split over a torchrun node's ranks."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def choose_threads(requested: int, work: int, usable: int | None = None, load: float | None = None) -> tuple[int, str]:
    """(threads, why) for a run whose meta-batch holds ``work`` input values; ``requested`` > 0
    is ``train.threads``. ``usable`` and ``load`` default to this machine's."""
    if requested > 0:
        return requested, "train.threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    usable = usable_cpus() if usable is None else usable
    if work < SMALL_WORK:
        return 1, f"small tasks: {work} input values per meta-batch"
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    free = max(1, min(usable, round(usable - load)))
    return free, f"{usable} usable CPU{'s' if usable != 1 else ''}, load {load:.1f}"


@contextmanager
def use_threads(requested: int, tasks, tasks_per_call: int):
    """Within the block, torch uses the threads ``choose_threads`` picks for calls on
    ``tasks_per_call`` tasks of the task source ``tasks`` (one task is drawn to measure its
    support and query values); torch's former count is restored after it. Yields (threads, why)."""
    import torch

    probe = tasks.sample(1, torch.Generator().manual_seed(0))
    work = (probe.support_x.numel() + probe.query_x.numel()) * tasks_per_call
    threads, why = choose_threads(requested, work)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads, why
    finally:
        torch.set_num_threads(before)
