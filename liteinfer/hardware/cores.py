"""How many cores this process may really use: physical cores, CPU affinity, cgroup quota."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs files), None when unlimited."""
    v2 = Path(root, "cpu.max")
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = Path(root, "cpu", "cpu.cfs_quota_us"), Path(root, "cpu", "cpu.cfs_period_us")
        if q.exists() and p.exists():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cores(root: str = "/sys/fs/cgroup") -> int:
    """Threads for compute kernels: physical cores, capped by affinity and cgroup quota.

    Hyperthreads share the FPUs the kernels saturate, so physical cores is the right default.
    """
    try:
        # on use: psutil is heavy (start-up, memory)
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        physical = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    n = min(physical, allowed)
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)
