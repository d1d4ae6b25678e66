"""How many CPU cores a process may use: torch's intra-op threads on a shared machine.

    torch.set_num_threads(cpu_threads(0))    # what every launcher does on the CPU
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity: container limits, taskset), else all."""
    try:
        return len(os.sched_getaffinity(0))  # respects CPU limits of containers and taskset
    except AttributeError:
        return os.cpu_count() or 1


def cpu_threads(setting: int) -> int:
    """Intra-op threads for one process: the setting, else $OMP_NUM_THREADS, else the cores left free.

    Free cores: the usable cores minus the load of the last minute (other jobs), shared by
    this machine's processes of the run. Oversubscribing a busy CPU slows torch's OpenMP
    kernels 20-40x (17-43 s instead of 0.5 s per demo step on 2 cores), far more than one
    thread too few costs.
    """
    if setting:
        return setting
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = usable_cores()
    free = cores - int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else cores
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(cores, free) // max(1, local))


def use_cpu_threads(setting: int = 0) -> int:
    """Set torch's intra-op threads to ``cpu_threads(setting)`` when no GPU is present; returns the count."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(setting))
    return torch.get_num_threads()
