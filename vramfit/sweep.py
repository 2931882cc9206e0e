"""Grid -> one fresh worker process per point -> store; resume, timeouts, several GPUs, progress.

Resume: a point is skipped when a row with status ok or oom exists for the same device model (name + capacity),
recipe key, torch version and emulated capacity; error and timeout points are tried again. `redo` runs all.
Devices of the same model share one queue of points (one worker per GPU at a time); different models each
measure the whole grid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from vramfit.devices import DeviceFacts, resolve
from vramfit.errors import VramfitError
from vramfit.executors import Event, Executor, Job, LocalExecutor
from vramfit.features import PHYSICS
from vramfit.grid import AXES, Grid, Measure
from vramfit.memmodel import MemoryModel
from vramfit.plan import (
    AdaptivePlanner,
    PlanSettings,
    bisect_batch,
    estimate_points,
    point_key,
    predicted_max_batch,
    target_column,
)
from vramfit.recipe import Recipe
from vramfit.store import DONE_STATUSES, Store, device_key
from vramfit.units import format_size

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_CMD = [sys.executable, "-m", "vramfit.worker"]
STDERR_TAIL = 800


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


def resolve_recipe(recipe: Recipe, facts: DeviceFacts) -> Recipe:
    """'auto' recipe fields made concrete for a device, without touching CUDA in this process."""
    if facts.device_type == "cuda" and recipe.dtype == "auto":
        major = int(str(facts.compute_capability or "0").split(".")[0] or 0)
        recipe = replace(recipe, dtype="bfloat16" if major >= 8 else "float16")
    return recipe.resolved(facts.device_type)


def point_label(p: dict) -> str:
    return "L{n_layer} H{n_head} C{n_embd} T{block_size} B{batch_size} V{vocab_size}".format(**p)


def reading_label(rec: dict) -> str:
    """The readings of one record in a few words."""
    st = rec.get("status")
    if st not in ("ok", "oom"):
        return f"{st}: {(rec.get('error') or '')[:80]}"
    parts = [st]
    for key, name in (("nvml_bytes", "nvml"), ("reserved_bytes", "reserved"), ("allocated_bytes", "alloc"),
                      ("tracked_bytes", "tracked"), ("rss_bytes", "rss")):
        if rec.get(key) is not None:
            parts.append(f"{name} {format_size(rec[key], 1)}")
    if rec.get("ms_per_iter"):
        parts.append(f"{rec['ms_per_iter']:.0f} ms/iter")
    return ", ".join(parts)


def worker_env(facts: DeviceFacts, recipe: Recipe, measure: Measure) -> dict[str, str]:
    """The worker's environment: RSS that follows frees (glibc mmap threshold, no MKL buffer cache) and
    `measure.threads` threads on CPU; GPU by UUID and the recipe's
    PYTORCH_CUDA_ALLOC_CONF on CUDA (the recipe is authoritative: an inherited value is removed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if facts.device_type == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        env["MALLOC_TRIM_THRESHOLD_"] = "0"
        env["MKL_DISABLE_FAST_MM"] = "1"  # MKL's buffer cache would keep ~2 MB of RSS that no tensor owns
        if measure.threads > 0:
            env["OMP_NUM_THREADS"] = str(measure.threads)
            env["MKL_NUM_THREADS"] = str(measure.threads)
    else:
        if facts.gpu_uuid:
            env["CUDA_VISIBLE_DEVICES"] = facts.gpu_uuid
        elif facts.index is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(facts.index)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if recipe.alloc_conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = recipe.alloc_conf
    return env


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _tail(text: str) -> str:
    text = (text or "").strip()
    return text[-STDERR_TAIL:]


class WorkerPool:
    """Runs worker processes and remembers the live ones so that they can be killed on interrupt."""

    def __init__(self, cmd: list[str] | None = None) -> None:
        self.cmd = list(cmd or WORKER_CMD)
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run(self, spec: dict, env: dict[str, str], timeout: float) -> dict:
        """One point in one fresh process; always returns a record (ok | oom | error | timeout)."""
        spec = {**spec, "spawn_time": time.time()}
        point = spec["point"]
        proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        with self.lock:
            self.live.add(proc)
        try:
            out, err = proc.communicate(json.dumps(spec), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return {**point, "status": "timeout", "error": f"timed out after {timeout:g} s; stderr: {_tail(err)}"}
        finally:
            with self.lock:
                self.live.discard(proc)
        rec = None
        lines = [ln for ln in (out or "").splitlines() if ln.strip()]
        if lines:
            try:
                rec = json.loads(lines[-1])
            except json.JSONDecodeError:
                rec = None
        if proc.returncode != 0 or not isinstance(rec, dict):
            why = _describe_exit(proc.returncode) if proc.returncode != 0 else "no JSON record on stdout"
            return {**point, "status": "error", "error": f"worker {why}; stderr: {_tail(err)}"}
        rec.update(point)  # the record is about the point we asked for
        if isinstance(rec.get("timings"), dict):
            rec["timings"]["wall"] = time.time() - spec["spawn_time"]  # as the parent saw it, exit included
        return rec

    def kill_all(self) -> None:
        with self.lock:
            for proc in list(self.live):
                try:
                    proc.kill()
                except OSError:
                    pass


class Progress:
    """A rich progress bar on a terminal; one plain line per point otherwise; nothing when quiet."""

    def __init__(self, total: int, quiet: bool = False, live: bool | None = None) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.live = (sys.stdout.isatty() if live is None else live) and not quiet
        self.bar = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[last]}"))
            self.task = self.bar.add_task("starting", total=total, last="")
            self.bar.start()

    def started(self, label: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=label)

    def finished(self, label: str, rec: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=f"last: {label}: {reading_label(rec)}")
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {label}: {reading_label(rec)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def plan(grid: Grid, store: Store, env_ids: list[int], redo: bool) -> tuple[list[dict], int]:
    """(points still to measure, number skipped because already measured)."""
    points, _ = grid.points()
    if redo:
        return points, 0
    done = store.measured_keys(env_ids[0])
    todo = [p for p in points if tuple(p[a] for a in AXES) not in done]
    return todo, len(points) - len(todo)


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
    store = Store(db)
    recipes = [resolve_recipe(grid.recipe, d) for d in devs]
    env_ids = [store.environment(d.to_dict(), r, emulate_bytes) for d, r in zip(devs, recipes, strict=True)]
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(devs):
        groups.setdefault(device_key(d.to_dict()), []).append(i)
    jobs: list[Job] = []
    n_invalid = grid.points()[1]
    total, resumed = 0, 0
    for key, members in groups.items():
        todo, skipped = plan(grid, store, [env_ids[i] for i in members], redo)
        r = recipes[members[0]]
        jobs += [Job(p, key, {"point": p, "recipe": r.to_dict(), "measure": grid.measure.to_dict(),
                              "emulate_bytes": emulate_bytes}) for p in todo]
        total += len(todo)
        resumed += skipped
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
    bar = Progress(total, quiet=quiet, live=live)

    @contextlib.contextmanager
    def measured_meanwhile():  # this thread's connection: skip what a concurrent sweep just did
        own = Store(db)
        try:
            yield lambda i, p: own.is_measured(env_ids[i], p)
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
    try:
        finished = 0
        for ev in events:
            label = point_label(ev.job.point) + (f" @{names[ev.slot]}" if len(devs) > 1 else "")
            if ev.kind == "start":
                bar.started(label)
                continue
            if ev.kind == "skip":  # measured meanwhile by a concurrent sweep
                result.resumed += 1
                finished += 1
                bar.finished(label, {"status": "skipped", "error": "measured by a concurrent sweep"})
                continue
            rec = ev.record
            store.insert_point(rec, env_of(ev), sweep_id)
            result.counts[rec["status"]] += 1
            finished += 1
            bar.finished(label, rec)
            if finished >= total:
                break
    except BaseException:
        ex.kill_all()
        events.close()
        bar.close()
        store.finish_sweep(sweep_id, "interrupted")
        store.close()
        ex.close()
        raise
    events.close()
    bar.close()
    store.finish_sweep(sweep_id, "done")
    store.close()
    ex.close()
    return result


def _idle_baseline(d: DeviceFacts) -> int | None:
    """Device used memory just before a worker starts (the fallback when NVML cannot match our PID)."""
    if d.device_type != "cuda":
        return None
    from vramfit.probe import NvmlProbe

    return NvmlProbe(d.gpu_uuid, d.index or 0).device_used()


# ---------------------------------------------------------------------------------------------- adaptive plan

def identity_points(store: Store, env_id: int) -> pd.DataFrame:
    """Every point measured on an environment with env_id's identity (device model, recipe, torch, emulation)."""
    dkey, rkey, tv, emu = store.identity(env_id)
    df = store.points_frame(recipe_key=rkey)
    same = (df["device_key"] == dkey) & (df["torch_version"].fillna("") == (tv or ""))
    same &= df["emulate_bytes"].isna() if emu is None else (df["emulate_bytes"] == emu)
    return df[same].reset_index(drop=True)


def _single_device(device: str, gpu_indices: list[int] | None, what: str) -> DeviceFacts:
    devs = resolve(device, gpu_indices)
    if len(devs) > 1:
        raise VramfitError(f"{what} runs on one device; give --device cuda:N instead of --devices")
    return devs[0]


def _capacity(d: DeviceFacts, emulate_bytes: int | None) -> int | None:
    """Bytes the plan must fit in: the emulated card, else a GPU's memory; None on a CPU without emulation."""
    if emulate_bytes:
        return int(emulate_bytes)
    return int(d.total_memory_bytes) if d.device_type == "cuda" and d.total_memory_bytes else None


def run_adaptive(grid: Grid, db: str | Path, settings: PlanSettings, device: str = "auto",
                 gpu_indices: list[int] | None = None, emulate_bytes: int | None = None, quiet: bool = False,
                 argv: list[str] | None = None, worker_cmd: list[str] | None = None,
                 log: Callable[[str], None] = print) -> SweepResult:
    """Measure the grid points `AdaptivePlanner` picks, one at a time, until its stop rule holds.

    Resumable: points of this grid already in the store (same device model, recipe, torch, emulation) count as
    measured, and the predictions stored with them feed the stop rule."""
    d = _single_device(device, gpu_indices, "an adaptive plan")
    store = Store(db)
    recipe = resolve_recipe(grid.recipe, d)
    env_id = store.environment(d.to_dict(), recipe, emulate_bytes)
    candidates, n_invalid = grid.points()
    capacity = _capacity(d, emulate_bytes)
    col = target_column(d.device_type)
    planner = AdaptivePlanner(candidates, col, settings, capacity)
    say = (lambda msg: None) if quiet else log
    if capacity is not None and settings.n_estimates > 0:
        t0 = time.time()
        todo = planner.estimate_targets(min(settings.n_estimates, len(candidates)))
        est, why = _cached_estimates(Path(db), todo, recipe, d)
        planner.set_estimates(est)
        say(f"dry-run estimates: {len(est)}/{len(todo)} points in {time.time() - t0:.0f} s"
            + (f" ({why})" if why else "") + f"; capacity {format_size(capacity)}")
    allp = identity_points(store, env_id)
    keys = {point_key(p) for p in candidates}
    in_grid = allp[[point_key(r) in keys for _, r in allp[list(AXES)].iterrows()]] if len(allp) else allp
    measured = in_grid[in_grid["status"].isin(DONE_STATUSES)].drop_duplicates(list(AXES), keep="last")
    prior: dict[tuple, float] = {}
    for _, r in measured.iterrows():
        row = store.conn.execute("SELECT extra FROM points WHERE point_id = ?", (int(r["point_id"]),)).fetchone()
        extra = json.loads(row[0]) if row and row[0] else {}
        if extra.get("plan_predicted_bytes") is not None:
            prior[point_key(r)] = float(extra["plan_predicted_bytes"])
    resumed = len(measured)
    sweep_id = store.start_sweep(grid.name, grid.path, {**grid.to_dict(), "plan": settings.to_dict()},
                                 [d.device_type if d.index is None else f"{d.device_type}:{d.index}"],
                                 emulate_bytes, settings.points, n_invalid, resumed, argv)
    result = SweepResult(sweep_id, str(db), settings.points, n_invalid, resumed)
    say(f"sweep {sweep_id} '{grid.name}' (adaptive, at most {settings.points} of {len(candidates)} points, "
        f"target error {settings.target_error:.1%}) on {d.device_name}"
        + (f", emulating {format_size(emulate_bytes)}" if emulate_bytes else "")
        + f": {resumed} already measured; recipe {recipe.key()}; db {db}")
    pool = WorkerPool(worker_cmd)
    env = worker_env(d, recipe, grid.measure)
    tried = measured
    with _recorded(store, sweep_id, pool.kill_all):
        while True:
            check = planner.should_stop(measured, prior)
            if check.stop:
                result.note = f"stopped: {check.why}"
                break
            choice = planner.next(tried)
            if choice is None:
                result.note = f"stopped: no candidate left ({check.why})"
                break
            p = choice.point
            rec = pool.run(_spec(p, recipe, d, grid.measure, emulate_bytes), env, grid.measure.timeout_s)
            rec.update({k: v for k, v in choice.extra().items() if v is not None})
            point_id = store.insert_point(rec, env_id, sweep_id)
            result.counts[rec["status"]] += 1
            row = pd.DataFrame([{**rec, **{k: p[k] for k in AXES}, "point_id": point_id}])
            tried = pd.concat([tried, row], ignore_index=True)
            if rec["status"] in DONE_STATUSES:
                measured = pd.concat([measured, row], ignore_index=True)
                if choice.predicted_bytes is not None:
                    prior[point_key(p)] = choice.predicted_bytes
            pred = ""
            if choice.predicted_bytes is not None and rec.get(col):
                pred = f"; predicted {format_size(choice.predicted_bytes, 1)} " \
                       f"({(choice.predicted_bytes - rec[col]) / rec[col]:+.1%})"
            say(f"[{len(tried)}/{settings.points}] {choice.reason}: {point_label(p)}: {reading_label(rec)}{pred}")
    say(result.note)
    return result


def _spec(point: dict, recipe: Recipe, d: DeviceFacts, measure: Measure, emulate_bytes: int | None) -> dict:
    """The worker's input for one point on one device (the adaptive and boundary planners' single queue)."""
    return {"point": point, "recipe": recipe.to_dict(), "device": d.torch_device, "gpu_uuid": d.gpu_uuid,
            "measure": measure.to_dict(), "emulate_bytes": emulate_bytes, "idle_baseline": _idle_baseline(d)}


@contextlib.contextmanager
def _recorded(store: Store, sweep_id: int, on_interrupt: Callable[[], None]):
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


def _cached_estimates(db: Path, todo: list[dict], recipe: Recipe, d: DeviceFacts) -> tuple[dict, str]:
    """Dry-run estimates for `todo`, cached beside the database (<db>.estimates.json) so a resumed plan does not
    recompute them; keyed by recipe, device type and compute capability."""
    path = db.with_name(db.name + ".estimates.json")
    key = f"{recipe.key()}|{d.device_type}|{d.compute_capability}"
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    have = {tuple(json.loads(k)): v for k, v in cache.get(key, {}).items()}
    missing = [p for p in todo if point_key(p) not in have]
    why = ""
    if missing:
        new, why = estimate_points(missing, recipe.to_dict(), d.device_type, d.compute_capability)
        have.update(new)
        cache[key] = {json.dumps(list(k)): v for k, v in have.items()}
        try:
            path.write_text(json.dumps(cache, indent=0))
        except OSError:
            pass
    return {point_key(p): have[point_key(p)] for p in todo if point_key(p) in have}, why


# ---------------------------------------------------------------------------------------------- boundary search

@dataclass
class BoundaryResult:
    """The largest batch that fits one model shape, found on real runs."""

    shape: dict
    capacity: int
    start: int  # the first probe: the model's predicted largest batch (or the range's middle without a model)
    start_source: str  # model file | fitted on the store | range middle
    best: int  # 0: not even the smallest batch fits
    probes: list = field(default_factory=list)  # Probe(batch_size, fits, status), in order


def run_boundary(grid: Grid, db: str | Path, device: str = "auto", gpu_indices: list[int] | None = None,
                 emulate_bytes: int | None = None, model: MemoryModel | None = None, quiet: bool = False,
                 argv: list[str] | None = None, worker_cmd: list[str] | None = None,
                 log: Callable[[str], None] = print) -> list[BoundaryResult]:
    """For each model shape of the grid: the largest batch in the grid's batch range (1..max for one value) that
    fits, by galloping + bisection on real runs from the model's prediction (`model`, else the memory model fitted
    to this device's points in the store, else the range's geometric middle). Every probe is stored; probes
    already in the store are reused, so a rerun resumes."""
    d = _single_device(device, gpu_indices, "a boundary search")
    capacity = _capacity(d, emulate_bytes)
    if capacity is None:
        raise VramfitError("--boundary on the CPU needs --emulate-vram (the capacity whose edge to find)")
    store = Store(db)
    recipe = resolve_recipe(grid.recipe, d)
    env_id = store.environment(d.to_dict(), recipe, emulate_bytes)
    pts, n_invalid = grid.points()
    batches = sorted({p["batch_size"] for p in pts})
    lo, hi = (batches[0], batches[-1]) if len(batches) > 1 else (1, batches[0])
    shapes = list({tuple(p[k] for k in AXES if k != "batch_size"): None for p in pts})
    col = target_column(d.device_type)
    source = "model file"
    if model is None:
        have = identity_points(store, env_id)
        ok = have[(have["status"] == "ok") & have[col].notna()] if len(have) else have
        if len(ok) >= 4:
            from vramfit.features import frame_features

            model = MemoryModel(PHYSICS, regimes=2).fit(frame_features(ok), ok[col].to_numpy(dtype=float))
            source = f"fitted on {len(ok)} stored points"
        else:
            source = "range middle"
    sweep_id = store.start_sweep(grid.name, grid.path, {**grid.to_dict(), "plan": "boundary"},
                                 [d.device_type if d.index is None else f"{d.device_type}:{d.index}"],
                                 emulate_bytes, 0, n_invalid, 0, argv)
    pool = WorkerPool(worker_cmd)
    env = worker_env(d, recipe, grid.measure)
    say = (lambda msg: None) if quiet else log
    out: list[BoundaryResult] = []
    with _recorded(store, sweep_id, pool.kill_all):
        for key in shapes:
            shape = dict(zip([k for k in AXES if k != "batch_size"], key, strict=True))
            if model is not None:
                start = predicted_max_batch(model, shape, capacity, lo, hi)
            else:
                start = int(round(math.sqrt(lo * hi)))
            label = point_label({**shape, "batch_size": "*"})
            say(f"boundary {label} in {format_size(capacity)}: batch {lo}..{hi}, start {start} ({source})")

            def probe(b: int, shape: dict = shape, start: int = start) -> bool | None:
                p = {**shape, "batch_size": b}
                known = identity_points(store, env_id)
                if len(known):
                    same = known[(known[list(AXES)] == pd.Series(p)[list(AXES)]).all(axis=1)]
                    same = same[same["status"].isin(DONE_STATUSES)]
                    if len(same):
                        st = same["status"].iloc[-1]
                        say(f"  batch {b}: {st} (already measured)")
                        return st == "ok"
                rec = pool.run(_spec(p, recipe, d, grid.measure, emulate_bytes), env, grid.measure.timeout_s)
                rec.update(plan="boundary", boundary_start=start)
                store.insert_point(rec, env_id, sweep_id)
                say(f"  batch {b}: {reading_label(rec)}")
                return {"ok": True, "oom": False}.get(rec["status"])

            best, probes = bisect_batch(probe, start, lo, hi)
            out.append(BoundaryResult(shape, capacity, start, source, best, probes))
            say(f"  largest batch that fits: {best} (predicted {start}; {len(probes)} probes)")
    return out
