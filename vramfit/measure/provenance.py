"""Where a measurement came from: the GPU and its driver, the software that ran it (torch, CUDA, cuDNN, Triton,
Python), the date and the commit. Read without creating a CUDA context (NVML for the GPU; version calls only)."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path


def git_commit(root: str | Path) -> str:
    """HEAD of the repository at `root` (short, '+dirty' with uncommitted changes to tracked files), or why there
    is none: git missing, `root` not a repository (a copied working tree), git failing."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return f"unknown ({(head.stderr.strip().splitlines() or ['git failed'])[-1][:120]})"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except FileNotFoundError:
        return "unknown (no git)"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions() -> dict:
    """torch, its CUDA and cuDNN (None on a build without them), Triton and Python."""
    import torch

    try:
        cudnn = torch.backends.cudnn.version() if torch.version.cuda else None
    except Exception:  # noqa: BLE001 - a CUDA build whose cuDNN does not load
        cudnn = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "triton": _version("triton") or _version("pytorch-triton"), "python": platform.python_version()}


def provenance(root: str | Path) -> dict:
    """The GPU (NVML: name, driver, total bytes; 'cpu' where none), the software, the date (UTC), the commit."""
    from vramfit.measure.devices import cpu_facts, nvml_devices

    gpus, note = nvml_devices()
    dev = gpus[0] if gpus else cpu_facts()
    return {"gpu": dev.device_name, "driver": dev.driver_version, "total_memory_bytes": dev.total_memory_bytes,
            "gpus": len(gpus), "nvml_note": note, **software_versions(), "host": platform.node(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_commit(root)}
