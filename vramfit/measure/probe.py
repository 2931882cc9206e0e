"""Memory probes: live tensor-storage tracker (CPU allocator analogue), process RSS, NVML, torch CUDA counters.

Everything here is safe to import without CUDA or NVML; each probe says when it cannot read.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vramfit.measure.devices import same_uuid

__all__ = [
    "StorageTracker",
    "allocator_peak",
    "rss_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    "malloc_for_speed",
    "NvmlProbe",
    "cuda_counters",
]


class StorageTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created while active; the CPU analogue of the CUDA allocator.

    Usage::

        with StorageTracker(cap_bytes=None, round_to=1) as tr:
            ...                       # any torch code: forward, backward, optimizer step
        tr.peak, tr.current           # bytes: high-water mark and what is still alive

    - Every tensor an op returns is followed to its untyped storage; a storage is counted once (views share
      it, keyed by its StorageImpl address) and uncounted by a weakref finalizer when it dies. Works with real
      tensors and with FakeTensorMode (enter the fake mode first, then the tracker).
    - `round_to`: round each storage up to a multiple (512 mimics the CUDA caching allocator's granularity).
    - `cap_bytes`: when the live bytes exceed it after an op, raise `torch.OutOfMemoryError` (an emulated card).
    - `add(*tensors)` counts tensors that existed before the tracker was entered (e.g. a model's parameters).
    - `reset_peak()` sets the peak to the current live bytes.
    Storages created outside the dispatcher (torch.from_numpy, torch.compile's generated wrappers) are not seen.

    This is the one implementation of "live storages and their peak": the dry run's tracker
    (`vramfit.dryrun.fake_step.StepTracker`) extends it through three hooks that cost nothing here:
    `_counted(sid, delta)` (a storage appeared, grew, shrank or died), `_before_outputs(func, args)` (the op
    ran, its outputs are about to be counted) and `_after_op(func, args)` (they were: update the peak).
    """

    def __init__(self, cap_bytes: int | None = None, round_to: int = 1) -> None:
        super().__init__()
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        self.cap_bytes = cap_bytes
        self.round_to = round_to
        self.current = 0
        self.peak = 0
        self.n_ooms = 0
        self.live: dict[int, int] = {}  # storage key (StorageImpl address) -> sid
        self.size: dict[int, int] = {}  # sid -> rounded bytes (live storages only)
        self.refs: dict[int, weakref.ref] = {}  # sid -> weakref whose finalizer uncounts the storage
        self._next_sid = 0

    def _size(self, nbytes: int) -> int:
        r = self.round_to
        return -(-nbytes // r) * r if r > 1 else nbytes

    def _new_sid(self) -> int:
        sid = self._next_sid
        self._next_sid += 1
        return sid

    def sid_of(self, t: torch.Tensor) -> int | None:
        """The id under which `t`'s storage is counted, None if it is not."""
        return self.live.get(t.untyped_storage()._cdata)

    def _counted(self, sid: int, delta: int) -> None:
        """Hook: storage `sid` changed the live bytes by `delta` (new: +size, resized: +-diff, freed: -size)."""

    def _track(self, t: torch.Tensor) -> int | None:
        if t.device.type == "meta":  # e.g. the seed/offset placeholders of fused attention kernels
            return None
        try:
            st = t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse / exotic layouts have no plain storage
            return None
        key = st._cdata
        n = self._size(st.nbytes())
        sid = self.live.get(key)
        if sid is not None:
            old = self.size[sid]
            if n != old:  # resized in place
                self.size[sid] = n
                self.current += n - old
                self._counted(sid, n - old)
            return sid
        sid = self._new_sid()
        self.live[key] = sid
        self.size[sid] = n
        self.refs[sid] = weakref.ref(st, lambda _, key=key, sid=sid: self._free(key, sid))
        self.current += n
        self._counted(sid, n)
        return sid

    def _free(self, key: int, sid: int) -> None:
        if self.live.get(key) == sid:
            del self.live[key]
        n = self.size.pop(sid, 0)
        self.refs.pop(sid, None)
        self.current -= n
        self._counted(sid, -n)

    def add(self, *tensors: torch.Tensor) -> None:
        """Count already existing tensors (each storage once) and update the peak."""
        for t in tensors:
            self._track(t)
        self.peak = max(self.peak, self.current)

    def reset_peak(self) -> None:
        self.peak = self.current

    def _before_outputs(self, func: Any, args: tuple) -> None:
        """Hook: `func` ran; its outputs are counted next."""

    def _after_op(self, func: Any, args: tuple) -> None:
        """Hook: `func`'s outputs are counted; keep the peak."""
        if self.current > self.peak:
            self.peak = self.current

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._before_outputs(func, args)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        self._after_op(func, args)
        if self.cap_bytes is not None and self.current > self.cap_bytes:
            self.n_ooms += 1
            need = self.current
            del out
            raise torch.OutOfMemoryError(
                f"StorageTracker: {need} bytes live exceed the emulated capacity of {self.cap_bytes} bytes"
            )
        return out


# ------------------------------------------------------------------------------- CPU: the allocator's own log


class CompiledStorageTracker(StorageTracker):
    """A `StorageTracker` under which torch.compile still compiles: for a compiled point's measured steps.

    Dynamo does not compile a frame first called while a non-infra TorchDispatchMode is active: it runs it eagerly,
    for good ("non-infra torch dispatch mode present", torch/_dynamo/convert_frame.py), so under the plain tracker a
    compiled trainer trains eagerly. This one asks to be switched off while Dynamo and Inductor compile and on
    again while the compiled code runs (`TorchDispatchMode.ignore_compile_internals`): it counts what the compiled
    code dispatches (parameters, gradients, optimizer state, extern kernels' outputs), not the buffers Inductor's
    generated code allocates directly (`empty_strided_cpu`); `allocator_peak` sees those."""

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True


class AllocatorPeak:
    """Peak live bytes of CPU tensors between `start()` and `stop()`, above what was live at `start()`: the running
    sum of the CPU allocator's `[memory]` events under `torch.profiler.profile(profile_memory=True)`.

    Unlike `StorageTracker` this sees every CPU allocation, including buffers allocated outside the dispatcher
    (torch.compile's generated code calls `empty_strided_cpu` directly). Exact bytes as requested (no 64-B
    rounding); tensors created before `start` and freed after it count negative. Slow: the profiler records
    every op, so keep the window small (one step)."""

    def __init__(self) -> None:
        self._prof: Any = None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()

    def stop(self) -> int:
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        live = peak = 0
        for _, n in events:
            live += n
            peak = max(peak, live)
        return peak

    def cancel(self) -> None:
        """Stop without reading (the window did not close)."""
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof = None


def allocator_peak(fn: Any) -> int:
    """`AllocatorPeak` over `fn()`."""
    window = AllocatorPeak()
    window.start()
    try:
        fn()
    except BaseException:
        window.cancel()
        raise
    return window.stop()


def training_state_bytes(model: Any, optimizer: Any) -> int:
    """Bytes of the tensors a training loop keeps between steps: parameters, buffers, gradients, optimizer state."""
    state = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    params = list(model.parameters())
    return live_tensor_bytes([*params, *model.buffers(), *(p.grad for p in params), *state])


def live_tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (an iterable; None entries skipped), as allocated."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- CPU: RSS


def rss_bytes() -> int:
    """Current resident set size of this process (bytes)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM) of this process in bytes; getrusage where /proc is missing; 0 where neither
    exists (Windows: `resource` is Unix-only, so it is imported here, never at module level)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its dynamic threshold tops out


def malloc_for_speed() -> bool:
    """Undo the sweep's exact-RSS malloc settings (MALLOC_MMAP_THRESHOLD_=64K, TRIM 0) for timing; glibc only.

    Those settings make every tensor above 64 KB a fresh mmap, zero-filled by page faults and unmapped on free:
    right for reading RSS, but on the CPU quick grid they slowed a step by 1.6x and made it vary +-10 % from
    process to process. This sets the thresholds where glibc's own dynamic ones settle in a long training run
    (mmap above 32 MB, trim above 64 MB), so the timed steps run like `vramfit train`. False where not glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's own libc: no find_library subprocess
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX))


# ---------------------------------------------------------------------------------------------- CUDA: NVML


def _handle(nv, uuid: str | None, index: int):
    """An NVML handle by UUID (a GPU's, or a MIG instance's: found among the MIG handles where the driver's
    nvmlDeviceGetHandleByUUID does not take the UUID), else by NVML index."""
    if not uuid:
        return nv.nvmlDeviceGetHandleByIndex(index)
    try:
        return nv.nvmlDeviceGetHandleByUUID(uuid.encode() if isinstance(uuid, str) else uuid)
    except Exception:
        pass
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        try:
            n = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        except Exception:
            continue
        for k in range(n):
            try:
                m = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except Exception:
                continue
            if same_uuid(nv.nvmlDeviceGetUUID(m), uuid):
                return m
    raise LookupError(f"no NVML device with UUID {uuid}")


class NvmlProbe:
    """NVML readings for one device (by UUID: a GPU or a MIG instance): used memory, the compute processes.

    `ok` is False when NVML is missing or fails; every method then returns None instead of raising.
    """

    def __init__(self, uuid: str | None = None, index: int = 0) -> None:
        self.ok = False
        self.handle = None
        self.error = ""
        try:
            import pynvml

            self._nv = pynvml
            pynvml.nvmlInit()
            self.handle = _handle(pynvml, uuid, index)
            self.ok = True
        except Exception as exc:  # ImportError, NVMLError_* (library not found, no driver, ...), LookupError
            self.error = f"{type(exc).__name__}: {exc}"

    def _memory(self):
        nv = self._nv
        try:
            return nv.nvmlDeviceGetMemoryInfo(self.handle, version=nv.nvmlMemory_v2)
        except Exception:  # drivers before the v2 struct: NVMLError_FunctionNotFound
            return nv.nvmlDeviceGetMemoryInfo(self.handle)

    def device_used(self) -> int | None:
        """Device-wide used bytes (v2 memory info, which excludes reserved memory, where available)."""
        if not self.ok:
            return None
        try:
            return int(self._memory().used)
        except Exception:
            return None

    def device_total(self) -> int | None:
        """The device's total bytes as NVML reports them (a MIG instance: the instance's)."""
        if not self.ok:
            return None
        try:
            return int(self._memory().total)
        except Exception:
            return None

    def processes(self) -> list[tuple[int, int | None]] | None:
        """(pid, used bytes or None) of each compute process on the device; None when NVML cannot list them.

        nvidia-ml-py's unversioned nvmlDeviceGetComputeRunningProcesses uses the v3 struct and raises
        NVMLLibraryMismatchError on a driver without it; the v2 call is tried next. usedGpuMemory is None where
        NVML cannot attribute memory to a process (Windows WDDM, MIG without privileges)."""
        if not self.ok:
            return None
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
            fn = getattr(self._nv, name, None)
            if fn is None:
                continue
            try:
                procs = fn(self.handle)
            except Exception:
                continue
            return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)) for p in procs]
        return None

    def process_used(self, pid: int | None = None) -> int | None:
        """Used bytes of process `pid` (default: this one) from the compute-process list; None if not listed
        (containers report host PIDs) or unavailable."""
        pid = os.getpid() if pid is None else pid
        return dict(self.processes() or []).get(pid)

    def snapshot(self) -> dict:
        """What a worker needs from before it starts: device used bytes (the idle baseline) and the PIDs of the
        compute processes already there (so that the worker can tell its own host PID from theirs)."""
        procs = self.processes()
        return {"idle_baseline": self.device_used(), "pids_before": None if procs is None else [p for p, _ in procs]}


def cuda_counters(device: torch.device | str | int, cuda: Any = None) -> dict[str, int]:
    """torch caching-allocator counters: max allocated / reserved, reserved now, alloc retries, OOMs. `cuda`: the
    torch.cuda module (or a stand-in)."""
    cuda = cuda or torch.cuda
    stats = cuda.memory_stats(device)
    return {
        "allocated_bytes": int(cuda.max_memory_allocated(device)),
        "reserved_bytes": int(cuda.max_memory_reserved(device)),
        "reserved_now_bytes": int(cuda.memory_reserved(device)),
        "alloc_retries": int(stats.get("num_alloc_retries", 0)),
        "num_ooms": int(stats.get("num_ooms", 0)),
    }
