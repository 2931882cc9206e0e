"""`vramfit sweep --boundary`: the largest batch that fits each shape, by galloping + bisection on real runs,
starting from the memory model's prediction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vramfit.errors import VramfitError
from vramfit.fit.features import PHYSICS, features
from vramfit.fit.memmodel import MemoryModel
from vramfit.shape import KEYS
from vramfit.store import DONE_STATUSES, Store
from vramfit.sweep.adaptive import target_column
from vramfit.sweep.dynamic import sweep_batch_dim
from vramfit.sweep.grid import Grid
from vramfit.sweep.orphans import wait_for_orphans
from vramfit.sweep.pool import WorkerPool, point_spec, worker_env
from vramfit.sweep.progress import point_label, reading_label
from vramfit.sweep.runner import capacity_bytes, check_batch_mode, identity_points, recorded, single_device
from vramfit.units import format_size


@dataclass
class Probe:
    batch_size: int
    fits: bool
    status: str


def predicted_max_batch(model: MemoryModel, shape: dict, capacity: float, lo: int, hi: int) -> int:
    """The largest batch in [lo, hi] whose prediction is within `capacity` (lo when none is)."""
    batches = np.arange(lo, hi + 1)
    f = features(shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"], batches,
                 shape["vocab_size"])
    fits = model.predict(f) <= capacity
    return int(batches[fits].max()) if fits.any() else lo


def bisect_batch(probe: Callable[[int], bool | None], start: int, lo: int = 1, hi: int = 4096) -> tuple[int, list]:
    """Largest batch b in [lo, hi] with probe(b) True, assuming fitting is monotone in b, from a guess `start`:
    gallop from `start` (steps 1, 2, 4, ...) until the outcome flips, then bisect. `probe` returns True (fits),
    False (OOM) or None (neither: the search stops). Returns (best batch, 0 if none fits; probes as Probe)."""
    if lo < 1 or hi < lo:
        raise VramfitError(f"batch range must be 1 <= lo <= hi, got {lo}..{hi}")
    probes: list[Probe] = []
    seen: dict[int, bool] = {}

    def ask(b: int) -> bool | None:
        if b not in seen:
            r = probe(b)
            probes.append(Probe(b, bool(r), {True: "ok", False: "oom", None: "error"}[r]))
            if r is None:
                return None
            seen[b] = r
        return seen[b]

    start = min(max(start, lo), hi)
    good, bad = lo - 1, hi + 1  # invariant: good fits (or is lo-1), bad does not (or is hi+1)
    r = ask(start)
    if r is None:
        return 0, probes
    step = 1
    if r:
        good = start
        while good < hi:
            b = min(hi, good + step)
            r = ask(b)
            if r is None:
                return max(good, 0) if good >= lo else 0, probes
            if not r:
                bad = b
                break
            good, step = b, step * 2
    else:
        bad = start
        while bad > lo:
            b = max(lo, bad - step)
            r = ask(b)
            if r is None:
                return 0, probes
            if r:
                good = b
                break
            bad, step = b, step * 2
    while bad - good > 1 and good >= lo:
        mid = (good + bad) // 2
        r = ask(mid)
        if r is None:
            break
        if r:
            good = mid
        else:
            bad = mid
    return (good if good >= lo else 0), probes


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
    d = single_device(device, gpu_indices, "a boundary search")
    capacity = capacity_bytes(d, emulate_bytes)
    if capacity is None:
        raise VramfitError("--boundary on the CPU needs --emulate-vram (the capacity whose edge to find)")
    recipe = d.resolve(grid.recipe)
    grid, batch_line = sweep_batch_dim(grid, [(d.device_type, bool(recipe.compile))])  # may refuse: before the store
    wait_for_orphans(db)
    store = Store(db)
    env_id = store.environment(d.to_dict(), recipe, emulate_bytes)
    check_batch_mode(store, [env_id], bool(grid.measure.dynamic_batch))
    pts, n_invalid = grid.points()
    batches = sorted({p["batch_size"] for p in pts})
    lo, hi = (batches[0], batches[-1]) if len(batches) > 1 else (1, batches[0])
    shapes = list({tuple(p[k] for k in KEYS if k != "batch_size"): None for p in pts})
    col = target_column(d.device_type)
    source = "model file"
    if model is None:
        have = identity_points(store, env_id)
        ok = have[(have["status"] == "ok") & have[col].notna()] if len(have) else have
        if len(ok) >= 4:
            from vramfit.fit.features import frame_features

            model = MemoryModel(PHYSICS, regimes=2).fit(frame_features(ok), ok[col].to_numpy(dtype=float))
            source = f"fitted on {len(ok)} stored points"
        else:
            source = "range middle"
    sweep_id = store.start_sweep(grid.name, grid.path, {**grid.to_dict(), "plan": "boundary"},
                                 [d.device_type if d.index is None else f"{d.device_type}:{d.index}"],
                                 emulate_bytes, 0, n_invalid, 0, argv)
    pool = WorkerPool(worker_cmd, owner=db)
    env = worker_env(d, recipe, grid.measure)
    say = (lambda msg: None) if quiet else log
    say(pool.describe())
    if batch_line:
        say(batch_line)
    out: list[BoundaryResult] = []
    with pool, recorded(store, sweep_id, pool.kill_all):
        for key in shapes:
            shape = dict(zip([k for k in KEYS if k != "batch_size"], key, strict=True))
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
                    same = known[(known[list(KEYS)] == pd.Series(p)[list(KEYS)]).all(axis=1)]
                    same = same[same["status"].isin(DONE_STATUSES)]
                    if len(same):
                        st = same["status"].iloc[-1]
                        say(f"  batch {b}: {st} (already measured)")
                        return st == "ok"
                rec = pool.run(point_spec(p, recipe, d, grid.measure, emulate_bytes), env, grid.measure.timeout_s)
                rec.update(plan="boundary", boundary_start=start)
                store.insert_point(rec, env_id, sweep_id)
                say(f"  batch {b}: {reading_label(rec)}")
                return {"ok": True, "oom": False}.get(rec["status"])

            best, probes = bisect_batch(probe, start, lo, hi)
            out.append(BoundaryResult(shape, capacity, start, source, best, probes))
            say(f"  largest batch that fits: {best} (predicted {start}; {len(probes)} probes)")
    return out
