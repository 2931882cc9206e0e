"""Whether a sweep's compiled points mark the batch dimension dynamic (issue 17): the gate, a pure function.

With a dynamic batch dimension, points that differ only in batch size (the boundary search, the adaptive sweep's
batch moves, a grid's batch axis) compile one graph: the first point compiles it into the sweep's shared Inductor
cache (`vramfit.sweep.pool.compile_cache_env`) and the next ones load it, where a static batch compiles a graph per
batch size. Each point is a fresh process, so the on-disk cache is the only way a compilation is reused: without
a shared cache the dynamic path saves nothing.

The dynamic path is used by default only on a device type where its readings were measured equal to the static
path's (`VERIFIED`, with the evidence); elsewhere `--dynamic-batch` still asks for it, and the sweep says that it
is unverified. `--static-batch` (or `[measure] dynamic_batch = false`) keeps it off.

Decision today: static by default on every device. On the CPU the dynamic graph's tensor readings were
byte-identical to the static one's but its RSS was not (see `VERIFIED`); on CUDA it has not been measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramfit.errors import VramfitError
from vramfit.sweep.grid import Grid, Measure

# device type -> the benchmark that found a compiled point's readings the same with a dynamic batch dimension as
# with a static one. Absent: not shown equal, so not the default there.
# - cpu: absent. experiments/bench_dynamic_batch.py (results/bench/dynamic-batch-cpu.md), L1 H2 C64 T64 V256
#   compiled at batch 4, 8, 12: the tracked bytes (Inductor's buffers included) and the CPU allocator's peak of a
#   steady step were byte-identical static and dynamic, but the process's RSS was 3.9-5.7 MB (42-131 %) higher
#   with the dynamic graph, in three runs: beyond the RSS tolerance, so the readings differ.
# - cuda: absent. Not measured yet: experiments/gpu_evidence.sh, stage dynamic-batch, compares NVML, reserved and
#   allocated bytes of the same shapes static and dynamic on a lent GPU.
VERIFIED: dict[str, str] = {}


@dataclass(frozen=True)
class BatchDecision:
    """The sweep's choice for its compiled points, and why (printed by the sweep)."""

    dynamic: bool
    reason: str

    def line(self) -> str:
        return f"compiled points: batch dimension {'dynamic' if self.dynamic else 'static'} ({self.reason})"


def decide(requested: bool | None, compiled: bool, device_type: str, cache_shared: bool,
           verified: dict[str, str] | None = None) -> BatchDecision:
    """Dynamic or static batch dimension for a sweep's points on `device_type`.

    `requested`: True (--dynamic-batch), False (--static-batch) or None (decide here); `compiled`: whether the
    resolved recipe compiles; `cache_shared`: whether the sweep's points share one Inductor cache (the only way a
    fresh process reuses a compilation); `verified`: the evidence table (default `VERIFIED`). Asking for the
    dynamic path with an eager recipe is an error (there is nothing to compile)."""
    evidence = VERIFIED if verified is None else verified
    proof = evidence.get(device_type)
    if not compiled:
        if requested:
            raise VramfitError(f"--dynamic-batch (measure.dynamic_batch) marks the batch dimension for torch.compile, "
                               f"and this sweep's recipe is eager on {device_type}: set compile = true")
        return BatchDecision(False, "eager recipe")
    if requested is False:
        return BatchDecision(False, "asked: --static-batch")
    if requested:
        if proof:
            return BatchDecision(True, f"asked; readings verified equal to static on {device_type}: {proof}")
        return BatchDecision(True, f"asked; NOT verified on {device_type}: its readings may differ from a static "
                                   "batch's")
    if not proof:
        return BatchDecision(False, f"the dynamic path's readings are not verified equal to static on {device_type}; "
                                    "--dynamic-batch forces it")
    if not cache_shared:
        return BatchDecision(False, "no shared compile cache: a fresh process per point cannot reuse a compilation")
    return BatchDecision(True, f"readings verified equal to static on {device_type}: {proof}")


def resolve_measure(measure: Measure, pairs: list[tuple[str, bool]], cache_shared: bool
                    ) -> tuple[Measure, BatchDecision]:
    """The measure settings with `dynamic_batch` made concrete for a sweep whose devices are `pairs` of (device
    type, resolved compile), and the decision. Devices that disagree (one eager, one compiled GPU) get the
    dynamic path only when every compiled one does; asking for it with any eager device is an error."""
    decisions = [decide(measure.dynamic_batch, compiled, dtype, cache_shared) for dtype, compiled in pairs]
    compiled = [d for d, (_, c) in zip(decisions, pairs, strict=True) if c]
    chosen = next((d for d in compiled if not d.dynamic), compiled[0] if compiled else decisions[0])
    return replace(measure, dynamic_batch=chosen.dynamic), chosen


def sweep_batch_dim(grid: Grid, devices: list[tuple[str, bool]], local: bool = True) -> tuple[Grid, str | None]:
    """The grid with its measure's `dynamic_batch` decided for a sweep on `devices` ((device type, resolved
    compile) pairs), and the line the sweep prints about it (None for an eager sweep). `local`: the points run in
    this machine's worker pool, whose compiled points share one Inductor cache where `share_compile_cache` says
    so (a Ray task has its own pool and cache: nothing is shared between points)."""
    from vramfit.sweep.pool import share_compile_cache

    shared = local and all(share_compile_cache(dtype) for dtype, _ in devices)
    measure, decision = resolve_measure(grid.measure, devices, shared)
    line = decision.line() if any(c for _, c in devices) else None
    return replace(grid, measure=measure), line
