"""`vramfit sweep --boundary`: the largest batch that fits each shape, by galloping + bisection on real runs,
starting from the memory model's prediction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vramfit.errors import VramfitError
from vramfit.fit.memmodel import MemoryModel
from vramfit.shape import Shape
from vramfit.store import DONE_STATUSES
from vramfit.sweep.adaptive import feature_dict, frame_columns, memory_model, point_key, sweep_family, target_column
from vramfit.sweep.progress import point_label, reading_label
from vramfit.sweep.session import Chooser, SweepSession, capacity_bytes, identity_points
from vramfit.units import format_size


@dataclass
class Probe:
    batch_size: int
    fits: bool
    status: str


def predicted_max_batch(model: MemoryModel, shape: Shape, capacity: float, lo: int, hi: int) -> int:
    """The largest batch in [lo, hi] whose prediction is within `capacity` (lo when none is); the model reads the
    columns of its family (`model.family_`: FAMILY, else PHYSICS)."""
    batches = np.arange(lo, hi + 1)
    f = feature_dict([shape.with_(batch_size=int(b)).point() for b in batches], model.family_)
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

    shape: Shape  # its batch_size is the first of the searched range
    capacity: int
    start: int  # the first probe: the model's predicted largest batch (or the range's middle without a model)
    start_source: str  # model file | fitted on the store | range middle
    best: int  # 0: not even the smallest batch fits
    probes: list = field(default_factory=list)  # Probe(batch_size, fits, status), in order


class BoundaryChooser(Chooser):
    """For each model shape of the grid: the largest batch in the grid's batch range (1..max for one value) that
    fits, by galloping + bisection on real runs from the model's prediction (`model`, else the memory model fitted
    to this device's points in the store, else the range's geometric middle). Every probe is stored; probes
    already in the store are reused, so a rerun resumes. `result.boundaries`: a `BoundaryResult` per shape."""

    one_device = "a boundary search"

    def __init__(self, model: MemoryModel | None = None) -> None:
        self.model = model

    def check(self, s: SweepSession) -> None:
        if capacity_bytes(s.device, s.options.emulate_bytes) is None:
            raise VramfitError("--boundary on the CPU needs --emulate-vram (the capacity whose edge to find)")

    def run(self, s: SweepSession) -> None:
        o, grid, d, store, env_id = s.options, s.grid, s.device, s.store, s.env_ids[0]
        capacity = capacity_bytes(d, o.emulate_bytes)
        pts = grid.points()[0]
        batches = sorted({p["batch_size"] for p in pts})
        lo, hi = (batches[0], batches[-1]) if len(batches) > 1 else (1, batches[0])
        shapes = list({Shape.of(p).with_(batch_size=lo): None for p in pts})
        model, source = self._start_model(s, sweep_family(pts, s.recipes[0]))
        result = s.start(0, 0, plan="boundary")
        o.say(s.ex.describe())
        if s.batch_line:
            o.say(s.batch_line)
        for shape in shapes:
            if model is not None:
                start = predicted_max_batch(model, shape, capacity, lo, hi)
            else:
                start = int(round(math.sqrt(lo * hi)))
            label = point_label({**shape.point(), "batch_size": "*"})
            o.say(f"boundary {label} in {format_size(capacity)}: batch {lo}..{hi}, start {start} ({source})")

            def probe(b: int, shape: Shape = shape, start: int = start) -> bool | None:
                p = shape.with_(batch_size=b).point()
                known = identity_points(store, env_id)
                if len(known):
                    same = known[[point_key(r) == point_key(p) for _, r in known.iterrows()]]
                    same = same[same["status"].isin(DONE_STATUSES)]
                    if len(same):
                        st = same["status"].iloc[-1]
                        o.say(f"  batch {b}: {st} (already measured)")
                        return st == "ok"
                rec = s.measure_one(s.job(p, extra={"plan": "boundary", "boundary_start": start})).record
                o.say(f"  batch {b}: {reading_label(rec)}")
                return {"ok": True, "oom": False}.get(rec["status"])

            best, probes = bisect_batch(probe, start, lo, hi)
            result.boundaries.append(BoundaryResult(shape, capacity, start, source, best, probes))
            o.say(f"  largest batch that fits: {best} (predicted {start}; {len(probes)} probes)")

    def _start_model(self, s: SweepSession, family: tuple[str, str] | None) -> tuple[MemoryModel | None, str]:
        """The model whose prediction starts each search, and where it comes from (the store's points are fitted
        on the grid's columns: `family`, see `adaptive.sweep_family`)."""
        if self.model is not None and self.model.family_ == family:
            return self.model, "model file"
        col = target_column(s.device.device_type)
        have = identity_points(s.store, s.env_ids[0])
        ok = have[(have["status"] == "ok") & have[col].notna()] if len(have) else have
        if len(ok) < 4:
            return None, "range middle"
        return (memory_model(family).fit(frame_columns(ok, family), ok[col].to_numpy(dtype=float)),
                f"fitted on {len(ok)} stored points")
