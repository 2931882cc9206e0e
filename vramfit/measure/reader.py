"""One memory reader for the sweep worker and `vramfit train --measure`: what is read after each optimizer step,
how, and when the readings are stable.

CUDA (`CudaReader`), after every step:
- the caching allocator's counters (max allocated / reserved since the last peak reset, reserved now, retries);
- NVML: this process's own entry in the compute-process list when it can be found (by `os.getpid()`, or, in a
  container where NVML reports host PIDs, as the one PID that appeared since the snapshot taken before the worker
  started), else device used minus the idle baseline (`device-shared` when other compute processes were there);
- the step's peak, `nvml - memory_reserved() + max_memory_reserved()` (NVML is read at the end of a step; near
  the cap the allocator frees cached segments and retries, so the raw reading can be below the peak; kept as
  `nvml_raw_bytes`).
After step 1 (compile autotuning, benchmark buffers): `empty_cache()`, `reset_peak_memory_stats()` and the NVML
maxima start again, so the peak covers steps 2..N (`peak_steps`). Emulating a smaller card, the allocator is capped
once the context exists and again after step 1 so that the whole process (context, non-allocator memory such as
cuBLAS/cuDNN/Triton modules, allocator) stays within the card; a peak above it makes the point an `oom`.

CPU (`CpuReader`): the live-storage tracker's peak (the allocator analogue) and peak RSS, over steps 1..N (a
compiled trainer: 2..N, as on CUDA, step 1 being its compilation).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vramfit.measure.probe import (
    CompiledStorageTracker,
    NvmlProbe,
    StorageTracker,
    cuda_counters,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from vramfit.store import SHARED_GPU

CONTEXT_ASSUMED = 512 * 2**20  # a CUDA context when NVML cannot read it (the estimator's constant)
NVML_MAXIMA = ("nvml_bytes", "nvml_raw_bytes", "over_cap_bytes")


def is_stable(history: list[list[int]], window: int, tolerance: float) -> bool:
    """True when each reading's last `window` values differ by at most `tolerance` (relative to the largest)."""
    if len(history) < window:
        return False
    for series in zip(*history[-window:], strict=True):
        hi, lo = max(series), min(series)
        if hi > 0 and (hi - lo) / hi > tolerance:
            return False
    return True


def own_process(procs: list[tuple[int, int | None]] | None, pids_before: list[int] | None,
                pid: int) -> tuple[int | None, str | None]:
    """(this process's PID as NVML lists it, how it was found): 'getpid' when `pid` is listed; 'snapshot' when
    exactly one PID is new since `pids_before` (a container: NVML reports host PIDs); (None, None) otherwise."""
    if not procs:
        return None, None
    listed = {p for p, _ in procs}
    if pid in listed:
        return pid, "getpid"
    if pids_before is None:
        return None, None
    new = listed - set(pids_before)
    return (new.pop(), "snapshot") if len(new) == 1 else (None, None)


def foreign_processes(procs: list[tuple[int, int | None]] | None, own: int | None) -> int:
    """Compute processes on the device besides this one (not knowing which is ours: all listed but one)."""
    if not procs:
        return 0
    if own is None:
        return len(procs) - 1
    return sum(1 for p, _ in procs if p != own)


def nvml_reading(procs: list[tuple[int, int | None]] | None, own: int | None, device_used: int | None,
                 baseline: int | None, foreign: int) -> tuple[int | None, str]:
    """(bytes, source): our own process's used memory ('pid'), else device used minus the idle baseline
    ('device-baseline', or 'device-shared' with other compute processes present), else (None, 'none')."""
    if own is not None:
        used = dict(procs or []).get(own)
        if used is not None:
            return used, "pid"
    if device_used is not None and baseline is not None:
        return max(0, device_used - baseline), SHARED_GPU if foreign else "device-baseline"
    return None, "none"


def nvml_peak(raw: int, reserved_now: int, reserved_peak: int) -> int:
    """The process's NVML bytes at the step's peak: the end-of-step reading minus what the allocator holds now plus
    the most it held since the peak reset (the allocator frees cached blocks and retries before an OOM,
    c10/cuda/CUDACachingAllocator.cpp, so the end-of-step reading can be low)."""
    return raw - reserved_now + max(reserved_peak, reserved_now)


def allocator_fraction(emulate_bytes: int, non_allocator_bytes: int, total_bytes: int) -> float | None:
    """The `set_per_process_memory_fraction` that keeps the whole process within an emulated card: the allocator
    may hold (card - what is not the allocator's) of the device's `total_bytes`; None when nothing is left."""
    allowed = int(emulate_bytes) - int(non_allocator_bytes)
    if allowed <= 0 or total_bytes <= 0:
        return None
    return min(1.0, allowed / total_bytes)


def add_compiled_step(record: dict, live: int, step: int) -> None:
    """A compiled CPU reading made whole: `tracked_bytes` = the live tensor bytes between steps + the CPU allocator's
    peak of one steady step above them (`probe.AllocatorPeak`: Inductor's buffers and the compiled backward's
    gradients, which the storage tracker cannot see); the tracker's own figure stays as `tracked_dispatch_bytes`,
    the step peak as `alloc_step_peak_bytes`."""
    record.update(alloc_step_peak_bytes=step, tracked_dispatch_bytes=record.get("tracked_bytes"),
                  tracked_bytes=live + step)


def over_emulated_card(tracked: int, emulate_bytes: int | None) -> str | None:
    """The error of a compiled CPU reading above an emulated card (the tracker's cap, which raised for eager steps,
    could not see Inductor's buffers), else None."""
    if emulate_bytes and tracked > int(emulate_bytes):
        return f"compiled step: {tracked} bytes live exceed the emulated capacity of {int(emulate_bytes)} bytes"
    return None


class CudaReader:
    """Readings of one CUDA device for one process (see the module docstring). `cuda`: torch.cuda or a stand-in."""

    def __init__(self, nvml: NvmlProbe | None, device: int = 0, baseline: int | None = None,
                 pids_before: list[int] | None = None, emulate_bytes: int | None = None, cuda: Any = None,
                 pid: int | None = None) -> None:
        self.nvml = nvml if nvml is not None and nvml.ok else None
        self.cuda = cuda or torch.cuda
        self.device, self.baseline, self.pids_before = device, baseline, pids_before
        self.emulate = int(emulate_bytes) if emulate_bytes else None
        self.pid = os.getpid() if pid is None else pid
        self.own: int | None = None
        self.first_step = 1
        self.record: dict = {}
        if nvml is not None and not nvml.ok:
            self.record["nvml_note"] = f"NVML unavailable ({nvml.error}); torch counters only"

    def nvml_now(self) -> tuple[int | None, str]:
        """One NVML reading of this process (identifying it first where needed) and its source."""
        if self.nvml is None:
            return None, "none"
        procs = self.nvml.processes()
        if self.own is None:
            self.own, how = own_process(procs, self.pids_before, self.pid)
            if how:
                self.record.update(nvml_pid=self.own, nvml_pid_match=how)
        foreign = foreign_processes(procs, self.own)
        self.record["foreign_procs"] = max(self.record.get("foreign_procs", 0), foreign)
        raw, source = nvml_reading(procs, self.own, self.nvml.device_used(), self.baseline, foreign)
        if raw is not None and self.record.get("nvml_source") != SHARED_GPU:
            self.record["nvml_source"] = source
        return raw, source

    def _cap(self, non_allocator: int) -> None:
        total = int(self.cuda.get_device_properties(self.device).total_memory)
        fraction = allocator_fraction(self.emulate, non_allocator, total)
        if fraction is None:
            raise torch.OutOfMemoryError(f"emulated card ({self.emulate} B) cannot hold this process's "
                                         f"{non_allocator} B outside the caching allocator")
        self.cuda.set_per_process_memory_fraction(fraction, self.device)
        self.record.update(non_allocator_bytes=int(non_allocator), allocator_cap_bytes=int(fraction * total))

    def start(self) -> None:
        """Once the CUDA context exists: the context's bytes and, emulating, the first allocator cap (raises
        torch.OutOfMemoryError when the emulated card cannot even hold the context). The tensor that created the
        context holds a segment of the allocator (a 1-element tensor: 2 MiB, kSmallBuffer in
        c10/cuda/CUDACachingAllocator.cpp), which NVML counts: it is the allocator's, not the context's, and the
        cap must not count it twice."""
        self.cuda.synchronize()
        raw, _ = self.nvml_now()
        ctx = None if raw is None else max(0, raw - int(self.cuda.memory_reserved(self.device)))
        self.record["context_bytes"] = ctx
        if self.emulate:
            self._cap(ctx if ctx is not None else CONTEXT_ASSUMED)
        self.cuda.reset_peak_memory_stats(self.device)

    def read(self, step: int) -> list[int]:
        """After optimizer step `step`: counters and NVML; the stability vector."""
        self.cuda.synchronize()
        c = cuda_counters(self.device, self.cuda)
        self.record.update({k: c[k] for k in ("allocated_bytes", "reserved_bytes", "alloc_retries", "num_ooms")})
        raw, _ = self.nvml_now()
        if raw is not None:
            peak = nvml_peak(raw, c["reserved_now_bytes"], c["reserved_bytes"])
            self.record["nvml_bytes"] = max(self.record.get("nvml_bytes") or 0, peak)
            self.record["nvml_raw_bytes"] = max(self.record.get("nvml_raw_bytes") or 0, raw)
            if self.emulate and peak > self.emulate:
                self.record["over_cap_bytes"] = max(self.record.get("over_cap_bytes") or 0, peak)
        self.record["peak_steps"] = [self.first_step, step]
        return [c["reserved_bytes"], self.record.get("nvml_bytes") or 0]

    def after_first_step(self) -> None:
        """Drop step 1 from the peaks (compile autotuning and benchmark buffers) and, emulating, cap the allocator
        again now that cuBLAS, cuDNN, lazily loaded kernels and Triton modules are loaded."""
        self.cuda.synchronize()
        self.cuda.empty_cache()
        if self.emulate:
            raw, _ = self.nvml_now()
            if raw is not None:
                self._cap(max(0, raw - int(self.cuda.memory_reserved(self.device))))
        self.cuda.reset_peak_memory_stats(self.device)
        self.record["step1_nvml_bytes"] = self.record.get("nvml_bytes")  # kept to show what step 1 alone costs
        self.record["step1_reserved_bytes"] = self.record.get("reserved_bytes")
        for k in NVML_MAXIMA:
            self.record.pop(k, None)
        self.first_step = 2

    def stop(self) -> None:
        """Nothing to release on CUDA."""

    def over_cap(self) -> str | None:
        """Why the point must count as an OOM on the emulated card (its NVML peak exceeded it), else None."""
        over = self.record.get("over_cap_bytes")
        if over:
            return f"the process used {over} B (NVML) on an emulated card of {self.emulate} B"
        return None


class CpuReader:
    """The live-storage tracker (allocator analogue, capped when emulating) and peak RSS of this process.

    `compiled`: the steps are torch.compile'd. The tracker then lets Dynamo compile (`CompiledStorageTracker`:
    under the plain one the trainer would run eagerly) and step 1, which compiles, is left out of both peaks as on
    CUDA (`peak_steps` [2, N]); the tracker then misses Inductor's own buffers, so the worker replaces the
    tracked bytes by the CPU allocator's figure after the loop (`worker._compiled_cpu_reading`)."""

    def __init__(self, emulate_bytes: int | None = None, compiled: bool = False) -> None:
        reset_peak_rss()
        self.rss0 = rss_bytes()
        cls = CompiledStorageTracker if compiled else StorageTracker
        self.tracker = cls(cap_bytes=int(emulate_bytes) if emulate_bytes else None)
        self.compiled = compiled
        self.first_step = 1
        self.record: dict = {}
        self.active = False

    def start(self) -> None:
        """Start tracking (before the model is built, so that its parameters count)."""
        self.tracker.__enter__()
        self.active = True

    def read(self, step: int) -> list[int]:
        self.record["tracked_bytes"] = self.tracker.peak
        self.record["rss_bytes"] = max(0, peak_rss_bytes() - self.rss0)
        self.record["peak_steps"] = [self.first_step, step]
        return [self.record["tracked_bytes"], self.record["rss_bytes"]]

    def after_first_step(self) -> None:
        """Eager, the CPU peak keeps step 1 (the worker warms kernels up beforehand); compiled, the peaks start
        again after it (step 1 compiles: the compiler's transient memory is not the training step's)."""
        if self.compiled:
            self.tracker.reset_peak()
            reset_peak_rss()
            self.first_step = 2

    def stop(self) -> None:
        if self.active:
            self.tracker.__exit__(None, None, None)
            self.active = False
        self.record["num_ooms"] = self.tracker.n_ooms

    def over_cap(self) -> str | None:
        return None


class MemoryReader:
    """A device reader plus the stability rule: `after_step(step)` reads and says whether the readings are stable
    (each of the last `window` readings from step 2 on, when Adam state exists, within `tolerance`)."""

    def __init__(self, device: CudaReader | CpuReader, window: int = 3, tolerance: float = 0.01,
                 min_iters: int = 3) -> None:
        self.device = device
        self.window, self.tolerance, self.min_iters = window, tolerance, max(3, min_iters)
        self.history: list[list[int]] = []

    @property
    def record(self) -> dict:
        return self.device.record

    def start(self) -> None:
        self.device.start()

    def stop(self) -> None:
        self.device.stop()

    def read(self, step: int) -> list[int]:
        """One reading without the stability bookkeeping (e.g. what a failed point held)."""
        return self.device.read(step)

    def over_cap(self) -> str | None:
        return self.device.over_cap()

    def after_step(self, step: int) -> bool:
        reading = self.device.read(step)
        if step == 1:
            self.device.after_first_step()
        else:
            self.history.append(reading)
        stable = step >= self.min_iters and is_stable(self.history, self.window, self.tolerance)
        self.record["stable"] = stable
        return stable
