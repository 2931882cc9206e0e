"""The grid chooser (`vramfit sweep`, `--plan grid`): every point of the grid not yet in the store, on every device.

Resume: a point is skipped when a row with status ok or oom exists for the same device model (name + capacity),
recipe key, torch version and emulated capacity; error and timeout points are tried again. `redo` runs all.
Devices of the same model share one queue of points (one worker per GPU at a time); different models each
measure the whole grid. Concurrent sweeps of one database split the work: each point is claimed in the store
before it runs (a claim of a process that died is taken over), so no point is measured twice.
"""

from __future__ import annotations

from vramfit.measure.devices import DeviceFacts
from vramfit.shape import Shape
from vramfit.store import Store, device_key
from vramfit.sweep.cost import CostEstimate, estimate_cost
from vramfit.sweep.executors import Job
from vramfit.sweep.grid import Grid
from vramfit.sweep.progress import Progress, point_label
from vramfit.sweep.session import Chooser, SweepSession, identity_points
from vramfit.units import format_size


def plan(grid: Grid, store: Store, env_ids: list[int], redo: bool) -> tuple[list[dict], int]:
    """(points still to measure, number skipped because already measured)."""
    points, _ = grid.points()
    if redo:
        return points, 0
    done = store.measured_shapes(env_ids[0])
    todo = [p for p in points if Shape.of(p) not in done]
    return todo, len(points) - len(todo)


def _jobs(s: SweepSession) -> tuple[list[Job], int]:
    """(jobs, points already measured): devices of one model share a queue of points."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(s.devices):
        groups.setdefault(device_key(d.to_dict()), []).append(i)
    jobs: list[Job] = []
    resumed = 0
    for members in groups.values():
        todo, skipped = plan(s.grid, s.store, [s.env_ids[i] for i in members], s.options.redo)
        jobs += [s.job(p, members[0]) for p in todo]
        resumed += skipped
    return jobs, resumed


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


class GridChooser(Chooser):
    """Every point of the grid not yet measured (all of them with `redo`), on every device."""

    def run(self, s: SweepSession) -> None:
        o, ex, devs, recipes = s.options, s.ex, s.devices, s.recipes
        jobs, resumed = _jobs(s)
        total = len(jobs)
        result = s.start(total, resumed)
        where = ", ".join(f"{d.device_name}" + (f" [{d.index}]" if d.index is not None else "") for d in devs)
        where += "" if ex.local else f" (executor {ex.name})"
        emu = f", emulating {format_size(o.emulate_bytes)}" if o.emulate_bytes else ""
        o.say(f"sweep {result.sweep_id} '{s.grid.name}' on {where}{emu}: {total} points to measure, {resumed} "
              f"already measured, {result.invalid} invalid combinations skipped; recipe {recipes[0].key()}; "
              f"db {o.db}")
        o.say(ex.describe())
        if s.batch_line:
            o.say(s.batch_line)
        if total and not o.quiet:
            o.say(sweep_cost(jobs, devs, s.env_ids, s.store, ex.worker_mode, [bool(r.compile) for r in recipes])
                  .line())
        bar = Progress(total, quiet=o.quiet, live=o.live)
        names = s.names()
        try:
            for ev in s.measure(jobs, skip_measured=not o.redo):
                label = point_label(ev.job.point) + (f" @{names[ev.slot]}" if len(devs) > 1 else "")
                if ev.kind == "start":
                    bar.started(label)
                elif ev.kind == "skip":  # measured, or being measured, by a concurrent sweep
                    bar.finished(label, {"status": "skipped", "error": "measured by a concurrent sweep"})
                else:
                    bar.finished(label, ev.record)
        finally:
            bar.close()
