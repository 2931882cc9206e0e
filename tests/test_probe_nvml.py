"""NvmlProbe against a fake `pynvml` that behaves like nvidia-ml-py (pynvml.py, nvidia-ml-py 12.x):

- `nvmlDeviceGetComputeRunningProcesses(handle)` returns objects with `.pid` and `.usedGpuMemory`, where
  `usedGpuMemory` is None when NVML reports NVML_VALUE_NOT_AVAILABLE (`nvmlDeviceGetComputeRunningProcesses_v3`);
  inside a container the PIDs are the host's, so our own PID is often missing from the list.
- `nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)` calls `nvmlDeviceGetMemoryInfo_v2` (used excludes
  reserved memory); drivers without that entry point raise NVMLError, and `nvmlDeviceGetMemoryInfo(handle)` (v1)
  still works.
- every call raises an `NVMLError` subclass on failure (e.g. NVMLError_LibraryNotFound from `nvmlInit`).

The probe must read process and device bytes, falling back from v2 to v1 and to None, never raising. (Which reading
a point uses -- its own PID, device minus baseline, or none -- is decided by measure/reader.py's CudaReader; its
fake-NVML tests are tests/test_cuda_measure.py.)"""

import os
import types

import pytest

from vramfit.measure.probe import NvmlProbe

GIB = 2**30


class NVMLError(Exception):
    pass


def fake_pynvml(procs=(), used=5 * GIB, used_v1=None, v2=True, procs_error=False, mem_error=False,
                init_error=False):
    """A module object standing in for pynvml; records the calls it gets."""
    calls = []
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.nvmlMemory_v2 = 0x02000028

    def nvmlInit():
        calls.append(("init",))
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def by_uuid(uuid):
        calls.append(("uuid", uuid))
        return ("handle", uuid)

    def by_index(index):
        calls.append(("index", index))
        return ("handle", index)

    def check(handle):
        if not (isinstance(handle, tuple) and handle[0] == "handle"):
            raise NVMLError("Invalid Argument")

    def memory(handle, version=None):
        calls.append(("memory", handle, version))
        check(handle)
        if mem_error:
            raise NVMLError("Unknown Error")
        if version is not None and not v2:
            raise NVMLError("Function Not Found")  # an old driver: no nvmlDeviceGetMemoryInfo_v2
        return types.SimpleNamespace(used=used if version is not None else (used_v1 or used), total=80 * GIB)

    def processes(handle):
        calls.append(("procs", handle))
        check(handle)
        if procs_error:
            raise NVMLError("Not Supported")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in procs]

    nv.nvmlInit, nv.nvmlDeviceGetHandleByUUID, nv.nvmlDeviceGetHandleByIndex = nvmlInit, by_uuid, by_index
    nv.nvmlDeviceGetMemoryInfo, nv.nvmlDeviceGetComputeRunningProcesses = memory, processes
    nv.calls = calls
    return nv


@pytest.fixture
def install(monkeypatch):
    def _install(nv):
        monkeypatch.setitem(__import__("sys").modules, "pynvml", nv)
        return nv
    return _install


ME = os.getpid()


def test_device_used_asks_for_v2_then_falls_back_to_v1(install):
    nv_mod = install(fake_pynvml(used=5 * GIB, used_v1=6 * GIB))
    nv = NvmlProbe("GPU-abc")
    assert nv.device_used() == 5 * GIB  # v2: used excludes the driver's reserved memory
    assert ("memory", ("handle", b"GPU-abc"), nv_mod.nvmlMemory_v2) in nv_mod.calls
    old = install(fake_pynvml(used=5 * GIB, used_v1=6 * GIB, v2=False))
    nv = NvmlProbe("GPU-abc")
    assert nv.device_used() == 6 * GIB
    assert [c[2] for c in old.calls if c[0] == "memory"] == [old.nvmlMemory_v2, None]


def test_process_used_of_another_pid(install):
    install(fake_pynvml(procs=[(ME, 3 * GIB), (4242, 7 * GIB)]))
    nv = NvmlProbe("GPU-abc")
    assert nv.process_used(4242) == 7 * GIB and nv.process_used() == 3 * GIB and nv.process_used(1) is None


def test_handle_by_uuid_bytes_or_index(install):
    nv_mod = install(fake_pynvml())
    assert NvmlProbe("GPU-abc").handle == ("handle", b"GPU-abc")  # NVML wants bytes
    assert NvmlProbe(b"GPU-raw").handle == ("handle", b"GPU-raw")
    assert NvmlProbe(None, index=3).handle == ("handle", 3)
    assert NvmlProbe().handle == ("handle", 0)
    assert [c[0] for c in nv_mod.calls].count("init") == 4


def test_init_failure_means_not_ok_and_every_read_is_none(install):
    nv_mod = install(fake_pynvml(procs=[(ME, GIB)], init_error=True))
    nv = NvmlProbe("GPU-abc")
    assert not nv.ok and nv.handle is None
    assert nv.error == "NVMLError: NVML Shared Library Not Found"
    assert nv.device_used() is None and nv.process_used() is None
    assert [c[0] for c in nv_mod.calls] == ["init"]  # nothing else is asked of a failed NVML


def test_device_total_is_the_memory_info_total_or_none(install):
    """nvmlDeviceGetMemoryInfo's `total` (a MIG instance reports its own); None without NVML or when the call fails."""
    install(fake_pynvml())
    assert NvmlProbe("GPU-abc").device_total() == 80 * GIB
    install(fake_pynvml(mem_error=True))
    assert NvmlProbe("GPU-abc").device_total() is None
    install(fake_pynvml(init_error=True))
    assert NvmlProbe("GPU-abc").device_total() is None


def test_snapshot_is_the_idle_baseline_and_the_pids_already_there(install):
    """What a worker needs before it starts: device used bytes, and the PIDs of compute processes present (None
    when NVML cannot list them, e.g. NVMLError_NotSupported)."""
    install(fake_pynvml(procs=[(4242, 7 * GIB), (4343, None)], used=9 * GIB))
    assert NvmlProbe("GPU-abc").snapshot() == {"idle_baseline": 9 * GIB, "pids_before": [4242, 4343]}
    install(fake_pynvml(procs_error=True, used=9 * GIB))
    assert NvmlProbe("GPU-abc").snapshot() == {"idle_baseline": 9 * GIB, "pids_before": None}
    install(fake_pynvml(procs=[], used=1 * GIB))
    assert NvmlProbe("GPU-abc").snapshot() == {"idle_baseline": 1 * GIB, "pids_before": []}
