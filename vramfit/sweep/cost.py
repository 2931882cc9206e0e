"""What a sweep will cost before it starts: its points times (a point's overhead + its measured steps).

With a profile of the device (this device model, recipe and torch in the store: `session.identity_points`), a
point costs the *measured* per-point overhead (everything but the steady steps: process start, import, CPU
warm-up, build, the first step with its compilation, exit), taken from the profile's points that ran in the same
worker mode, plus the profile's typical number of step-equivalents times the throughput model's ms/iter for its
shape, plus (forked) the fork server's start once. Without one (or too few timed points), the bench figures
below: experiments/bench_sweep.py on the quick grid, 2 shared CPU cores (results/bench/sweep-workers-cpu.md), a
rough guide anywhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vramfit.shape import KEYS

# experiments/bench_sweep.py, quick grid, 2 shared cores (load ~6), seconds: a point's overhead (its wall time
# but the steady steps), the steady steps, and the fork server's start (once per sweep and device, paid by the
# first point)
BENCH_OVERHEAD_S = {"spawn": 5.03, "fork": 0.85}
BENCH_STEPS_S = 3.3
BENCH_STARTUP_S = {"spawn": 0.0, "fork": 3.64}
FORKED_IMPORT_S = 0.1  # a point whose import took less than this was forked from the fork server
ZYGOTE_START_S = 1.0  # a forked point that waited longer than this to start waited for the fork server's import


@dataclass(frozen=True)
class CostEstimate:
    """The estimated wall time of `points` points, and where the figures come from."""

    points: int
    seconds: float
    overhead_s: float  # per point
    source: str

    def line(self) -> str:
        return f"{self.points} points, estimated {format_duration(self.seconds)} ({self.source})"


def format_duration(s: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    if not math.isfinite(s):
        return "unknown"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _timings(t) -> dict:
    try:
        d = json.loads(t) if isinstance(t, str) else t
    except (TypeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def profile_costs(profile: pd.DataFrame | None, mode: str) -> tuple[float, float, float] | None:
    """(start-up s once per device, overhead s per point, steady step-equivalents per point) measured on the
    profile's ok points that ran in worker `mode` (spawn | fork); None with fewer than 3 such points."""
    if profile is None or not len(profile) or "timings" not in profile.columns:
        return None
    ok = profile[(profile["status"] == "ok") & profile["ms_per_iter"].notna() & (profile["ms_per_iter"] > 0)]
    over, steps, starts = [], [], []
    for t, ms in zip(ok["timings"].map(_timings), ok["ms_per_iter"], strict=True):
        if not t.get("wall") or t.get("import") is None:
            continue
        if (t["import"] < FORKED_IMPORT_S) != (mode == "fork"):
            continue
        rest = t.get("iters") or 0.0
        steps.append(rest / (ms / 1000))
        start = t.get("process_start") or 0.0
        if mode == "fork" and start > ZYGOTE_START_S:  # this point waited for the fork server
            starts.append(start)
            over.append(t["wall"] - rest - start)
        else:
            over.append(t["wall"] - rest)
    if len(over) < 3:
        return None
    startup = float(np.median(starts)) if starts else BENCH_STARTUP_S[mode]
    return startup, float(np.median(over)), float(np.median(steps))


def estimate_cost(points: list[dict], profile: pd.DataFrame | None, mode: str, parallel: int = 1,
                  compiled: bool = False) -> CostEstimate:
    """Wall time of measuring `points` in worker `mode` on `parallel` interchangeable devices (see the module
    docstring for the two sources). `compiled`: the recipe compiles; a profile's overhead then includes each
    point's compilation, the bench figures (eager) do not, and the estimate says so."""
    n = len(points)
    par = max(1, parallel)
    measured = profile_costs(profile, mode)
    model = None
    if measured is not None:
        from vramfit.fit.throughput import fit_throughput

        report = fit_throughput(profile)
        model = report.model if report is not None else None
    if measured is None or model is None or not n:
        secs = (BENCH_STARTUP_S[mode] if n else 0.0) + n * (BENCH_OVERHEAD_S[mode] + BENCH_STEPS_S) / par
        extra = (" plus each point's torch.compile, not in these eager figures (tens of seconds a point on a GPU "
                 "for GPT-2 small; less where the sweep's shared compile cache hits)") if compiled else ""
        return CostEstimate(n, secs, BENCH_OVERHEAD_S[mode], f"no profile of this device yet: bench figures of the "
                            f"quick grid on 2 CPU cores, {BENCH_OVERHEAD_S[mode] + BENCH_STEPS_S:.1f} s/point{extra}")
    from vramfit.fit.throughput import predict_ms

    startup, overhead, steps = measured
    ms = predict_ms(model, *(np.array([p[k] for p in points]) for k in KEYS))
    secs = startup + float(n * overhead + steps * ms.sum() / 1000) / par
    return CostEstimate(n, secs, overhead, f"this device's profile: {overhead:.1f} s overhead + ~{steps:.0f} steps "
                        f"at the throughput model's ms/iter per point")
