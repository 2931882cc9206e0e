"""Grid -> one fresh worker process per point -> store; resume, timeouts, several GPUs, progress.

Resume: a point is skipped when a row with status ok or oom exists for the same device model (name + capacity),
recipe key, torch version and emulated capacity; error and timeout points are tried again. `redo` runs all.
Devices of the same model share one queue of points (one worker per GPU at a time); different models each
measure the whole grid.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vramfit.devices import DeviceFacts, resolve
from vramfit.grid import AXES, Grid, Measure
from vramfit.recipe import Recipe
from vramfit.store import Store, device_key
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
              live: bool | None = None, log: Callable[[str], None] = print) -> SweepResult:
    """Measure every point of `grid` not yet in the store on the chosen device(s); returns the counts."""
    devs = resolve(device, gpu_indices)
    store = Store(db)
    recipes = [resolve_recipe(grid.recipe, d) for d in devs]
    env_ids = [store.environment(d.to_dict(), r, emulate_bytes) for d, r in zip(devs, recipes, strict=True)]
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(devs):
        groups.setdefault(device_key(d.to_dict()), []).append(i)
    queues: dict[str, queue.Queue] = {}
    n_invalid = grid.points()[1]
    total, resumed = 0, 0
    for key, members in groups.items():
        todo, skipped = plan(grid, store, [env_ids[i] for i in members], redo)
        q: queue.Queue = queue.Queue()
        for p in todo:
            q.put(p)
        queues[key] = q
        total += len(todo)
        resumed += skipped
    names = [f"{d.device_type}:{d.index}" if d.index is not None else d.device_type for d in devs]
    sweep_id = store.start_sweep(grid.name, grid.path, grid.to_dict(), names, emulate_bytes, total, n_invalid,
                                 resumed, argv)
    result = SweepResult(sweep_id, str(db), total, n_invalid, resumed)
    if not quiet:
        where = ", ".join(f"{d.device_name}" + (f" [{d.index}]" if d.index is not None else "") for d in devs)
        emu = f", emulating {format_size(emulate_bytes)}" if emulate_bytes else ""
        log(f"sweep {sweep_id} '{grid.name}' on {where}{emu}: {total} points to measure, {resumed} already "
            f"measured, {n_invalid} invalid combinations skipped; recipe {recipes[0].key()}; db {db}")
    pool = WorkerPool(worker_cmd)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    bar = Progress(total, quiet=quiet, live=live)

    def work(i: int) -> None:
        d, r = devs[i], recipes[i]
        q = queues[device_key(d.to_dict())]
        env = worker_env(d, r, grid.measure)
        own = None if redo else Store(db)  # this thread's connection: skip what a concurrent sweep just did
        while not stop.is_set():
            try:
                p = q.get_nowait()
            except queue.Empty:
                break
            if own is not None and own.is_measured(env_ids[i], p):
                results.put(("skip", i, p, None))
                continue
            spec = {"point": p, "recipe": r.to_dict(), "device": d.torch_device, "gpu_uuid": d.gpu_uuid,
                    "measure": grid.measure.to_dict(), "emulate_bytes": emulate_bytes,
                    "idle_baseline": _idle_baseline(d)}
            results.put(("start", i, p, None))
            try:
                rec = pool.run(spec, env, grid.measure.timeout_s)
            except Exception as exc:  # noqa: BLE001 - e.g. cannot spawn: record it and go on
                rec = {**p, "status": "error", "error": f"cannot run worker: {exc}"}
            if not stop.is_set():
                results.put(("done", i, p, rec))
        if own is not None:
            own.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(devs))]
    try:
        for t in threads:
            t.start()
        finished = 0
        while finished < total:
            try:
                kind, i, p, rec = results.get(timeout=0.5)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and results.empty():
                    break
                continue
            label = point_label(p) + (f" @{names[i]}" if len(devs) > 1 else "")
            if kind == "start":
                bar.started(label)
                continue
            if kind == "skip":  # measured meanwhile by a concurrent sweep
                result.resumed += 1
                finished += 1
                bar.finished(label, {"status": "skipped", "error": "measured by a concurrent sweep"})
                continue
            store.insert_point(rec, env_ids[i], sweep_id)
            result.counts[rec["status"]] += 1
            finished += 1
            bar.finished(label, rec)
    except BaseException:
        stop.set()
        pool.kill_all()
        bar.close()
        store.finish_sweep(sweep_id, "interrupted")
        store.close()
        raise
    bar.close()
    store.finish_sweep(sweep_id, "done")
    store.close()
    return result


def _idle_baseline(d: DeviceFacts) -> int | None:
    """Device used memory just before a worker starts (the fallback when NVML cannot match our PID)."""
    if d.device_type != "cuda":
        return None
    from vramfit.probe import NvmlProbe

    return NvmlProbe(d.gpu_uuid, d.index or 0).device_used()
