"""Grid -> one fresh worker process per point -> store; resume, timeouts, several GPUs, progress.

Resume: a point is skipped when a row with status ok or oom exists for the same device model (name + capacity),
recipe key, torch version and emulated capacity; error and timeout points are tried again. `redo` runs all.
Concurrent sweeps of one database split the work: each point is claimed in the store before it runs (a claim
of a process that died is taken over), so no point is measured twice.
Devices of the same model share one queue of points (one worker per GPU at a time); different models each
measure the whole grid.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vramfit.errors import VramfitError
from vramfit.measure.devices import DeviceFacts, resolve
from vramfit.recipe import Recipe
from vramfit.shape import Shape
from vramfit.store import Store, device_key
from vramfit.sweep.cost import CostEstimate, estimate_cost
from vramfit.sweep.dynamic import sweep_batch_dim
from vramfit.sweep.executors import Event, Executor, Job, LocalExecutor
from vramfit.sweep.grid import Grid
from vramfit.sweep.orphans import wait_for_orphans
from vramfit.sweep.progress import Progress, point_label
from vramfit.units import format_size


@dataclass
class SweepResult:
    sweep_id: int
    db: str
    planned: int
    invalid: int
    resumed: int
    counts: Counter = field(default_factory=Counter)
    interrupted: bool = False
    note: str = ""  # adaptive plan: why it stopped


def plan(grid: Grid, store: Store, env_ids: list[int], redo: bool) -> tuple[list[dict], int]:
    """(points still to measure, number skipped because already measured)."""
    points, _ = grid.points()
    if redo:
        return points, 0
    done = store.measured_shapes(env_ids[0])
    todo = [p for p in points if Shape.of(p) not in done]
    return todo, len(points) - len(todo)


def _jobs(grid: Grid, store: Store, devs: list[DeviceFacts], recipes: list[Recipe], env_ids: list[int],
          emulate_bytes: int | None, redo: bool) -> tuple[list[Job], int, int]:
    """(jobs, points to measure, points already measured): devices of one model share a queue of points."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(devs):
        groups.setdefault(device_key(d.to_dict()), []).append(i)
    jobs: list[Job] = []
    total, resumed = 0, 0
    for key, members in groups.items():
        todo, skipped = plan(grid, store, [env_ids[i] for i in members], redo)
        r = recipes[members[0]]
        jobs += [Job(p, key, {"point": p, "recipe": r.to_dict(), "measure": grid.measure.to_dict(),
                              "emulate_bytes": emulate_bytes}) for p in todo]
        total += len(todo)
        resumed += skipped
    return jobs, total, resumed


def sweep_cost(jobs: list[Job], devs: list[DeviceFacts], env_ids: list[int], store: Store, mode: str,
               compiled: list[bool] | None = None) -> CostEstimate:
    """The sweep's estimated wall time: each device group's points over its devices, the slowest group."""
    members: dict[str, list[int]] = {}
    for i, d in enumerate(devs):
        members.setdefault(device_key(d.to_dict()), []).append(i)
    worst = CostEstimate(0, 0.0, 0.0, "nothing to measure")
    for key, idx in members.items():
        pts = [j.point for j in jobs if j.group == key]
        if not pts:
            continue
        est = estimate_cost(pts, identity_points(store, env_ids[idx[0]]), mode, len(idx),
                            bool(compiled and compiled[idx[0]]))
        if est.seconds >= worst.seconds:
            worst = est
    return CostEstimate(len(jobs), worst.seconds, worst.overhead_s, worst.source)


def run_sweep(grid: Grid, db: str | Path, device: str = "auto", gpu_indices: list[int] | None = None,
              emulate_bytes: int | None = None, redo: bool = False, quiet: bool = False,
              argv: list[str] | None = None, worker_cmd: list[str] | None = None,
              live: bool | None = None, log: Callable[[str], None] = print,
              executor: Executor | None = None) -> SweepResult:
    """Measure every point of `grid` not yet in the store on the chosen device(s); returns the counts.

    `executor` runs the points (default: `LocalExecutor`, this machine); this process alone writes the store. A
    point that ran on another device than planned (a cluster) is stored under the environment it ran on."""
    ex = executor or LocalExecutor(worker_cmd)
    devs = resolve(device, gpu_indices) if ex.local else ex.discover(device, gpu_indices)
    recipes = [d.resolve(grid.recipe) for d in devs]
    compiled = [(d.device_type, bool(r.compile)) for d, r in zip(devs, recipes, strict=True)]
    grid, batch_line = sweep_batch_dim(grid, compiled, ex.local)  # may refuse the grid: before the store is opened
    if ex.local:
        wait_for_orphans(db)
        ex.bind(str(db))
    store = Store(db)
    env_ids = [store.environment(d.to_dict(), r, emulate_bytes) for d, r in zip(devs, recipes, strict=True)]
    check_batch_mode(store, env_ids, bool(grid.measure.dynamic_batch))
    jobs, total, resumed = _jobs(grid, store, devs, recipes, env_ids, emulate_bytes, redo)
    n_invalid = grid.points()[1]
    names = [f"{d.device_type}:{d.index}" if d.index is not None else d.device_type for d in devs]
    if not ex.local:
        names = [f"{ex.name}:{d.device_name}" for d in devs]
    sweep_id = store.start_sweep(grid.name, grid.path, grid.to_dict(), names, emulate_bytes, total, n_invalid,
                                 resumed, argv)
    result = SweepResult(sweep_id, str(db), total, n_invalid, resumed)
    if not quiet:
        where = ", ".join(f"{d.device_name}" + (f" [{d.index}]" if d.index is not None else "") for d in devs)
        where += "" if ex.local else f" (executor {ex.name})"
        emu = f", emulating {format_size(emulate_bytes)}" if emulate_bytes else ""
        log(f"sweep {sweep_id} '{grid.name}' on {where}{emu}: {total} points to measure, {resumed} already "
            f"measured, {n_invalid} invalid combinations skipped; recipe {recipes[0].key()}; db {db}")
        log(ex.describe())
        if batch_line:
            log(batch_line)
        if total:
            log(sweep_cost(jobs, devs, env_ids, store, ex.worker_mode, [bool(r.compile) for r in recipes]).line())
    bar = Progress(total, quiet=quiet, live=live)

    @contextlib.contextmanager
    def measured_meanwhile():  # this thread's connection: claim each point, skip what a concurrent sweep has
        own = Store(db)
        try:
            yield lambda i, p: not own.claim(env_ids[i], p)
        finally:
            own.close()

    actual: dict[str, int] = {}  # environments of devices a cluster ran points on

    def env_of(ev: Event) -> int:
        if ev.facts is None:
            return env_ids[ev.slot]
        key = json.dumps([ev.facts, ev.recipe], sort_keys=True, default=str)
        if key not in actual:
            recipe = Recipe.from_dict(ev.recipe) if ev.recipe else recipes[ev.slot]
            actual[key] = store.environment(ev.facts, recipe, emulate_bytes)
        return actual[key]

    events = ex.run(jobs, devs, recipes, grid.measure, skip=None if redo else measured_meanwhile)
    status = "interrupted"
    try:
        for ev in events:
            label = point_label(ev.job.point) + (f" @{names[ev.slot]}" if len(devs) > 1 else "")
            if ev.kind == "start":
                bar.started(label)
            elif ev.kind == "skip":  # measured, or being measured, by a concurrent sweep
                result.resumed += 1
                bar.finished(label, {"status": "skipped", "error": "measured by a concurrent sweep"})
            else:
                store.insert_point(ev.record, env_of(ev), sweep_id)
                store.release(env_ids[ev.slot], ev.job.point)
                result.counts[ev.record["status"]] += 1
                bar.finished(label, ev.record)
            if bar.done >= total:
                break
        status = "done"
    finally:
        if status != "done":
            ex.kill_all()
        events.close()
        bar.close()
        store.finish_sweep(sweep_id, status)
        store.release()  # the claims of points this sweep started and did not store (interrupted)
        store.close()
        ex.close()
    return result


def identity_points(store: Store, env_id: int) -> pd.DataFrame:
    """Every point measured on an environment with env_id's identity (device model, recipe, torch, emulation)."""
    dkey, rkey, tv, emu = store.identity(env_id)
    df = store.points_frame(recipe_key=rkey)
    same = (df["device_key"] == dkey) & (df["torch_version"].fillna("") == (tv or ""))
    same &= df["emulate_bytes"].isna() if emu is None else (df["emulate_bytes"] == emu)
    return df[same].reset_index(drop=True)


def check_batch_mode(store: Store, env_ids: list[int], dynamic: bool) -> None:
    """Refuse to add points measured with a dynamic (or static) batch dimension beside compiled points of the same
    device and recipe measured the other way: their readings may differ (on the CPU their RSS does), so one fit
    must not mix them, and a resume would otherwise skip the stored points as if they were measured as asked.
    The sweep ends there: `store` is closed before the error is raised."""
    for env_id in dict.fromkeys(env_ids):
        df = identity_points(store, env_id)
        if df.empty:
            continue
        stored = {bool(e["dynamic_batch"]) for e in store.point_extras([int(i) for i in df["point_id"]]).values()
                  if e.get("dynamic_batch") is not None}
        other = stored - {bool(dynamic)}
        if other:
            was = "dynamic" if other.pop() else "static"
            store.close()
            raise VramfitError(f"this database holds compiled points of this device and recipe measured with a "
                               f"{was} batch dimension: rerun with --{was}-batch to resume or extend them, or use "
                               "another --db")


def single_device(device: str, gpu_indices: list[int] | None, what: str) -> DeviceFacts:
    devs = resolve(device, gpu_indices)
    if len(devs) > 1:
        raise VramfitError(f"{what} runs on one device; give --device cuda:N instead of --devices")
    return devs[0]


def capacity_bytes(d: DeviceFacts, emulate_bytes: int | None) -> int | None:
    """Bytes the plan must fit in: the emulated card, else a GPU's memory; None on a CPU without emulation."""
    if emulate_bytes:
        return int(emulate_bytes)
    return int(d.total_memory_bytes) if d.device_type == "cuda" and d.total_memory_bytes else None


@contextlib.contextmanager
def recorded(store: Store, sweep_id: int, on_interrupt: Callable[[], None]):
    """Close the sweep's row as 'done', or as 'interrupted' (after `on_interrupt`) when anything escapes,
    then the store."""
    status = "done"
    try:
        yield
    except BaseException:
        on_interrupt()
        status = "interrupted"
        raise
    finally:
        store.finish_sweep(sweep_id, status)
        store.close()


