"""A fake `pynvml` module and a fake `torch.cuda` surface reproducing what the real ones do, for CPU tests of the
CUDA paths (issue 12). Each behaviour copies nvidia-ml-py's pynvml.py (13.x):

- `nvmlDeviceGetComputeRunningProcesses` is the v3 call wrapped in `throwOnVersionMismatch`: on a driver without
  the v3 symbol it raises `NVMLLibraryMismatchError`; `nvmlDeviceGetComputeRunningProcesses_v2` still works there.
- a process's `usedGpuMemory` equal to NVML_VALUE_NOT_AVAILABLE is turned into None (WDDM, MIG without privileges).
- `nvmlDeviceGetMemoryInfo(h, version=nvmlMemory_v2)` calls `nvmlDeviceGetMemoryInfo_v2`, missing on old drivers
  (`NVMLError_FunctionNotFound`, raised by `_nvmlGetFunctionPointer`).
- MIG: `nvmlDeviceGetMigMode` -> [current, pending]; `nvmlDeviceGetMaxMigDeviceCount`; and
  `nvmlDeviceGetMigDeviceHandleByIndex` raising `NVMLError_NotFound` for an empty slot; a MIG handle answers
  `nvmlDeviceGetMemoryInfo` / `nvmlDeviceGetUUID` ('MIG-...') / `nvmlDeviceGetName` for the instance.
- In a container NVML lists host PIDs, which never equal `os.getpid()`.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

MIB = 2**20


@dataclass
class FakeDevice:
    """A GPU (or a MIG instance) as NVML sees it; `procs` maps host PID -> usedGpuMemory (None: not available, the
    memory is still in use). Device used = `idle` (driver, display) + what the processes hold (`held`)."""

    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    total: int = 40960 * MIB
    idle: int = 400 * MIB
    cc: tuple[int, int] = (8, 0)
    procs: dict = field(default_factory=dict)
    held: dict = field(default_factory=dict)  # PID -> bytes, also when NVML reports None for it
    migs: list = field(default_factory=list)  # FakeDevice instances; a GPU with any is in MIG mode
    mig_slots: int = 7

    @property
    def used(self) -> int:
        return self.idle + sum(self.held.get(p, u or 0) for p, u in self.procs.items())


def fake_pynvml(gpus: list[FakeDevice], v3: bool = True, memory_v2: bool = True) -> types.ModuleType:
    """A module with pynvml's names over `gpus` (NVML index = list position, i.e. PCI bus order)."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotFound(NVMLError):  # noqa: N801 - pynvml's names
        pass

    class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801
        pass

    class NVMLError_NoPermission(NVMLError):  # noqa: N801
        pass

    class NVMLLibraryMismatchError(Exception):
        pass

    def every():
        for g in gpus:
            yield g
            yield from g.migs

    def by_uuid(uuid):
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for d in gpus:  # like older drivers: GPU UUIDs only (MIG instances are found through their parent)
            if d.uuid == uuid:
                return d
        raise NVMLError_NotFound("Not Found")

    def memory(h, version=None):
        if version is not None and not memory_v2:
            raise NVMLError_FunctionNotFound("Function Not Found")
        return types.SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)

    def procs_of(h):
        return [types.SimpleNamespace(pid=p, usedGpuMemory=u, gpuInstanceId=0, computeInstanceId=0)
                for p, u in h.procs.items()]

    def procs_v3(h):
        if not v3:
            raise NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not match")
        return procs_of(h)

    def mig_mode(h):
        return [1 if h.migs else 0, 1 if h.migs else 0]

    def mig_handle(h, i):
        if i >= len(h.migs):
            raise NVMLError_NotFound("Not Found")
        return h.migs[i]

    nv.__dict__.update(
        NVMLError=NVMLError, NVMLError_NotFound=NVMLError_NotFound, NVMLError_NotSupported=NVMLError_NotSupported,
        NVMLError_NoPermission=NVMLError_NoPermission,
        NVMLError_FunctionNotFound=NVMLError_FunctionNotFound, NVMLLibraryMismatchError=NVMLLibraryMismatchError,
        NVML_DEVICE_MIG_ENABLE=1, nvmlMemory_v2=0x02000028,
        nvmlInit=lambda: None, nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlDeviceGetCount=lambda: len(gpus), nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetHandleByUUID=by_uuid, nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetName=lambda h: h.name, nvmlDeviceGetUUID=lambda h: h.uuid,
        nvmlDeviceGetCudaComputeCapability=lambda h: h.cc,
        nvmlDeviceGetComputeRunningProcesses=procs_v3, nvmlDeviceGetComputeRunningProcesses_v2=procs_of,
        nvmlDeviceGetMigMode=mig_mode, nvmlDeviceGetMaxMigDeviceCount=lambda h: h.mig_slots,
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
    )
    nv.every = every  # test helper, not pynvml's
    return nv


class FakeCuda:
    """The torch.cuda calls the readers make, over a simulated caching allocator and an NVML device.

    As in c10/cuda/CUDACachingAllocator.cpp and torch/cuda/memory.py: `memory_reserved` is what the allocator holds
    (cudaMalloc'd segments), `max_memory_reserved` its peak since `reset_peak_memory_stats`, `empty_cache` returns
    unused cached segments to the driver, and `set_per_process_memory_fraction(f)` caps the allocator at
    f * total_memory, nothing else (the context and non-allocator memory do not count against it). NVML's view of
    the process is context + non-allocator + reserved."""

    def __init__(self, device: FakeDevice, pid: int, context: int = 300 * MIB, total: int | None = None) -> None:
        self.device, self.pid = device, pid
        self.total = total or device.total
        self.context, self.non_allocator = context, 0
        self.reserved = self.peak_reserved = self.allocated = self.peak_allocated = 0
        self.cached = 0  # reserved but unused (what empty_cache returns)
        self.fraction: float | None = None
        self.calls: list[str] = []
        self._sync()

    def _sync(self) -> None:
        mine = self.context + self.non_allocator + self.reserved
        self.device.held[self.pid] = mine
        if self.device.procs.get(self.pid, 0) is not None or self.pid not in self.device.procs:
            self.device.procs[self.pid] = mine

    def step(self, reserved: int, cached: int = 0, non_allocator: int = 0, peak_reserved: int | None = None) -> None:
        """Simulate one training step: the allocator ends with `reserved` bytes (`cached` of them unused), its peak
        reaching `peak_reserved`; `non_allocator` bytes are loaded outside it (cuBLAS, cuDNN, Triton modules)."""
        self.reserved, self.cached = reserved, cached
        self.peak_reserved = max(self.peak_reserved, reserved, peak_reserved or 0)
        self.allocated = reserved - cached
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.non_allocator += non_allocator
        self._sync()

    # the torch.cuda surface
    def synchronize(self, device=None) -> None:
        self.calls.append("synchronize")

    def get_device_properties(self, device=0):
        self.calls.append("get_device_properties")
        uuid = self.device.uuid.removeprefix("GPU-").removeprefix("MIG-")
        return types.SimpleNamespace(total_memory=self.total, uuid=uuid, name=self.device.name, major=8, minor=0)

    def memory_stats(self, device=None) -> dict:
        return {"num_alloc_retries": 0, "num_ooms": 0}

    def max_memory_allocated(self, device=None) -> int:
        return self.peak_allocated

    def max_memory_reserved(self, device=None) -> int:
        return self.peak_reserved

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append("reset_peak_memory_stats")
        self.peak_reserved, self.peak_allocated = self.reserved, self.allocated

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.reserved -= self.cached
        self.cached = 0
        self._sync()

    def set_per_process_memory_fraction(self, fraction: float, device=None) -> None:
        self.calls.append("set_per_process_memory_fraction")
        assert isinstance(fraction, float) and 0 <= fraction <= 1  # torch/cuda/memory.py's checks
        self.fraction = fraction
