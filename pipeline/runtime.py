"""Process-level settings for a job: how many CPU threads, which device.

Snakemake's ``--cores 8`` on a 2-core machine does not scale a job's threads
down, and torch defaults to one thread per *visible* core, which inside a
SLURM or cgroup-limited job may be more than the job really has. We count
the CPUs this process may really use (affinity mask and cgroup quota) and cap
torch there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def available_cpus() -> int:
    """CPUs this process can really use: affinity mask, cgroup v2/v1 quota, SLURM allocation."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        n = min(n, int(slurm))
    return max(1, n)


def _cgroup_cpu_quota() -> float | None:
    cpu_max = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    try:
        quota, period = cpu_max.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def set_threads(requested: int | None = None) -> int:
    """Cap torch's intra-op threads at min(requested, available CPUs); return the number used."""
    n = available_cpus() if requested is None else max(1, min(requested, available_cpus()))
    torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch.cuda.is_available() is False")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human-readable device name for logs and outputs (e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)')."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
