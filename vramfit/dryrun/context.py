"""Device memory outside the caching allocator's segments: the CUDA context, and the cuBLAS workspaces.

nvidia-smi (NVML, per process) = reserved (the allocator's segments) + the CUDA context (driver state, the loaded
kernel modules, the per-thread local-memory reservation) + memory that libraries allocate outside the allocator.
cuBLAS/cuBLASLt workspaces are allocated *through* the caching allocator (at::cuda::getNewWorkspace in
aten/src/ATen/cuda/CublasHandlePool.cpp), so they are part of the replayed trace, not of this constant.

`CONTEXT_TABLE` holds the context sizes known to this project, each row with its source; `context_bytes` picks
the most specific row for (torch, CUDA, compute capability, lazy module loading). PyTorch sets
CUDA_MODULE_LOADING=LAZY when the user has not set it (pytorch/pytorch#86509, torch >= 1.13), and lazy loading
exists from CUDA 11.7. Rows from a GPU run of this project (experiments/gpu_evidence.sh, stage facts-context:
NVML of the process minus memory_reserved()) belong at the top of the table with that run as their source. Not in
the table: cuDNN's kernels, which load into the context lazily when cuDNN attention first runs (no published size;
the same stage measures what the first cuDNN attention call adds), and the context's local-memory reservation per
GPU kind (SMs x maximum resident threads per SM x the per-thread stack, 1 KiB by default and raised to the largest
frame a launched kernel needs; NVIDIA, forums.developer.nvidia.com/t/local-memory-management/289339/9): the
published rows hold it for a GPU they do not name, so a per-kind term would count part of it twice, and no source
gives the per-thread bytes of this workload (docs/dry-run.md; the same stage measures both).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class ContextRow:
    """One measured or documented CUDA context size; None in a key matches anything."""

    torch_min: tuple[int, int] | None
    torch_max: tuple[int, int] | None  # exclusive
    cuda_min: tuple[int, int] | None
    cuda_max: tuple[int, int] | None  # exclusive
    capability_min: tuple[int, int] | None
    capability_max: tuple[int, int] | None  # exclusive
    lazy: bool | None
    bytes: int
    source: str

    def matches(self, torch_v: tuple[int, int], cuda_v: tuple[int, int], cap: tuple[int, int], lazy: bool) -> bool:
        def within(v: tuple[int, int], lo: tuple[int, int] | None, hi: tuple[int, int] | None) -> bool:
            return (lo is None or v >= lo) and (hi is None or v < hi)
        return (within(torch_v, self.torch_min, self.torch_max) and within(cuda_v, self.cuda_min, self.cuda_max)
                and within(cap, self.capability_min, self.capability_max)
                and (self.lazy is None or self.lazy == lazy))

    def specificity(self) -> int:
        return sum(x is not None for x in (self.torch_min, self.torch_max, self.cuda_min, self.cuda_max,
                                           self.capability_min, self.capability_max, self.lazy))


CONTEXT_TABLE: tuple[ContextRow, ...] = (
    ContextRow((2, 1), None, (11, 7), None, None, None, True, 400_000_000,
               "published: ~400 MB for the context of a PyTorch 2.x process with CUDA >= 11.7 and lazy module "
               "loading (ptrblck, pytorch/pytorch#109888, 2023-09)"),
    ContextRow((1, 13), (2, 1), (11, 7), None, None, None, True, 287_047_680 - 20 * MiB,
               "published: cudaMemGetInfo total - free = 287,047,680 B after one 6.4 MB tensor (a 20 MiB "
               "segment) with CUDA_MODULE_LOADING=LAZY, torch 1.13 (pytorch/pytorch#86509)"),
    ContextRow((1, 13), None, None, None, None, None, False, 666_632_192 - 20 * MiB,
               "published: the same measurement with CUDA_MODULE_LOADING=DEFAULT (eager): 666,632,192 B "
               "(pytorch/pytorch#86509)"),
    ContextRow(None, None, None, (11, 7), None, None, None, 1_000_000_000,
               "published: before CUDA 11.7 every kernel was loaded into the context, > 1000 MB "
               "(ptrblck, pytorch/pytorch#107667, 2023-08)"),
)


def _version(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def lazy_loading(env: dict | None = None) -> bool:
    """Whether CUDA modules load lazily: PyTorch sets CUDA_MODULE_LOADING=LAZY unless the user set it."""
    env = os.environ if env is None else env
    return env.get("CUDA_MODULE_LOADING", "LAZY").upper() == "LAZY"


def context_row(capability: tuple[int, int], torch_version: str | None = None, cuda_version: str | None = None,
                lazy: bool | None = None) -> ContextRow:
    """The most specific `CONTEXT_TABLE` row for this process (defaults: the installed torch, its CUDA build or
    CUDA 12.4 for a CPU build, lazy loading from the environment)."""
    import torch

    tv = _version(torch_version or torch.__version__) or (2, 0)
    cv = _version(cuda_version or torch.version.cuda or "12.4") or (12, 4)
    lz = lazy_loading() if lazy is None else lazy
    rows = [r for r in CONTEXT_TABLE if r.matches(tv, cv, tuple(capability), lz)]
    if not rows:  # e.g. eager loading with torch < 1.13: the pre-lazy figure is the closest we know
        rows = [CONTEXT_TABLE[-1]]
    return max(rows, key=ContextRow.specificity)


def cublas_workspace_bytes(capability: tuple[int, int], env: dict | None = None) -> int:
    """The cuBLAS workspace per (handle, stream), from the caching allocator (`parseChosenWorkspaceSize`):
    CUBLAS_WORKSPACE_CONFIG (':SIZE_KiB:COUNT' pairs, summed) if set and parsable, else 32 MiB on capability
    9.x-12.x (Hopper, Blackwell) and ':4096:2:16:8' (8 MiB + 128 KiB) before. cuBLASLt shares it (the unified
    workspace, TORCH_CUBLASLT_UNIFIED_WORKSPACE, on by default)."""
    env = os.environ if env is None else env
    default = 4096 * 8 * 1024 if 9 <= capability[0] <= 12 else 4096 * 1024 * 2 + 16 * 1024 * 8
    val = env.get("CUBLAS_WORKSPACE_CONFIG")
    if val:
        pairs = re.findall(r":([0-9]+):([0-9]+)", val)
        if pairs:
            return sum(int(size) * 1024 * int(count) for size, count in pairs)
    return default


def process_memory(capability: tuple[int, int], reserved: int, **kwargs: object) -> dict:
    """The whole-device figure for a process whose allocator peaks at `reserved` bytes: reserved + context."""
    row = context_row(capability, **kwargs)  # type: ignore[arg-type]
    return {"reserved_bytes": reserved, "context_bytes": row.bytes, "device_bytes": reserved + row.bytes,
            "context_source": row.source, "context_row": asdict(row)}
