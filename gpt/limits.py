"""What this machine can hold, checked before work starts: a request that would not fit in memory is refused
with one line naming the need and the limit, instead of growing until the kernel kills it. No torch here."""

from __future__ import annotations

import os

from gpt.errors import ConfigError

ADAM_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments: what training holds per parameter


def available_ram() -> int | None:
    """Bytes of RAM available to a new allocation (Linux MemAvailable; else free pages; None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def check_memory(need: float, what: str, available: int | None = None, where: str = "RAM") -> None:
    """Refuse `need` bytes when more than `available` (default: the RAM available now) with one ConfigError."""
    have = available_ram() if available is None else available
    if have is not None and need > have:
        raise ConfigError(f"{what} needs about {_gib(need)}, more than the {_gib(have)} of {where} available")


def check_nproc(nproc: int, device: str, n_gpus: int, n_cpus: int | None = None) -> None:
    """DDP processes on this node: at most one per GPU on CUDA (one per CPU on the CPU); else one ConfigError."""
    n_cpus = cpu_count() if n_cpus is None else n_cpus
    on_cpu = device == "cpu" or (device == "auto" and n_gpus == 0)
    limit, what = (n_cpus, "CPUs") if on_cpu else (n_gpus, "GPUs")
    if nproc > limit:
        raise ConfigError(f"--nproc {nproc} is more than the {limit} {what} of this machine")
