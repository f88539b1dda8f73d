"""Process-level settings for a job: how many CPU threads, which device, which forward precision.

Snakemake's ``--cores 8`` on a 2-core machine does not scale a job's threads
down, and torch defaults to one thread per *visible* core, which inside a
SLURM or cgroup-limited job may be more than the job really has. We count
the CPUs this process may really use (affinity mask and cgroup quota) and cap
torch there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

import torch

from pipeline.cpus import available_cpus  # noqa: F401  (re-exported: the step's CPU count)

FORWARD_DTYPES = ("float32", "bfloat16", "float16")


class DeviceError(RuntimeError):
    """The configured device is not there (``device: cuda`` without a GPU)."""


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
        raise DeviceError(
            "config key device: cuda, but torch finds no CUDA GPU here (torch.cuda.is_available() is False); set device: auto or cpu"
        )
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human-readable device name for logs and outputs (e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)')."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def resolve_forward_dtype(name: str, device: torch.device) -> str:
    """``auto`` → bfloat16 on CUDA, float32 on CPU; other names pass through."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in FORWARD_DTYPES:
        raise ValueError(f"forward dtype must be one of {FORWARD_DTYPES} or auto, got {name!r}")
    return name


def forward_precision(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for a forward pass at ``name`` (a resolved forward dtype); float32: none."""
    if name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, name))


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process exit when ``parent_pid`` dies, even by kill -9.

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG).
    Everywhere: a daemon thread polls ``os.getppid()`` every 0.5 s and exits when
    the process was re-parented. Used as the DataLoader workers' init.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
