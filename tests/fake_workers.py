"""A fake sweep worker whose memory is a known physics formula (milliseconds per point, no training): the sweep's
planners (adaptive, boundary) and executors are tested with it."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from vramfit.fit.features import features
from vramfit.shape import KEYS
from vramfit.store import Store
from vramfit.sweep.executors import Executor
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep

# memory = 3 MB + 16 B/param + 12 B per token per vocab entry + 40 B per token-layer-channel + 8 B per token-channel
FORMULA = "3e6 + 16 * P + 12 * N * V + 40 * N * L * C + 8 * N * C"
FAKE_WORKER = textwrap.dedent(f"""
    import json, sys
    spec = json.loads(sys.stdin.read())
    p = spec["point"]
    L, C, T, B, V = p["n_layer"], p["n_embd"], p["block_size"], p["batch_size"], p["vocab_size"]
    P, N = V * C + T * C + L * (2 * 2 * C + 4 * C * C + 4 * C + 8 * C * C + 5 * C) + 2 * C, B * T  # count_params
    y = int({FORMULA} + float(sys.argv[1]) * N ** 1.5)
    cap = spec.get("emulate_bytes")
    status = "oom" if cap and y > cap else "ok"
    print(json.dumps({{**p, "status": status, "tracked_bytes": y if status == "ok" else cap, "rss_bytes": y,
                      "iters": 4, "stable": True, "timings": {{"wall": 0.01}}}}))
""")


def formula(p: dict) -> float:
    f = features(*(p[k] for k in KEYS))
    P, N, V, L, C = f["params"][0], f["tokens"][0], p["vocab_size"], p["n_layer"], p["n_embd"]
    return 3e6 + 16 * P + 12 * N * V + 40 * N * L * C + 8 * N * C  # FORMULA


def fake_cmd(nonlinear: float = 0.0) -> list[str]:
    return [sys.executable, "-c", FAKE_WORKER, str(nonlinear)]


AXES = {"n_layer": [1, 2, 4], "n_head": [2, 4], "n_embd": [64, 128, 256], "block_size": [32, 64, 128],
        "batch_size": [2, 4, 8, 16], "vocab_size": [512, 2048]}
BOUNDARY_SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "vocab_size": 512}
BOUNDARY_BEST = 20  # the emulated card holds the boundary shape at batch 20, not 21


def plan_rows(db: Path) -> list[tuple]:
    """(shape, status, tracked bytes, what the chooser stored with it) per point, in the order measured."""
    with Store(db) as s:
        rows = s.conn.execute(f"SELECT {', '.join(KEYS)}, status, tracked_bytes, extra FROM points "
                              "ORDER BY point_id").fetchall()
    keep = ("plan", "plan_reason", "plan_predicted_bytes", "plan_feasibility_bytes", "boundary_start")
    return [(*r[:-1], {k: v for k, v in json.loads(r[-1] or "{}").items() if k in keep}) for r in rows]


def choose_all(folder: Path, make_executor: Callable[[], Executor]) -> tuple:
    """An adaptive plan (exact physics: it stops early) and a boundary search, each through a new executor from
    `make_executor`, into databases in `folder`: ((adaptive rows, why it stopped), (boundary rows, largest
    batches))."""
    from vramfit.sweep.adaptive import AdaptiveChooser, PlanSettings
    from vramfit.sweep.boundary import BoundaryChooser

    grid = load_grid(None, AXES, measure_overrides={"timeout_s": 60})
    res = run_sweep(grid, SweepOptions(folder / "adaptive.sqlite", device="cpu", quiet=True),
                    AdaptiveChooser(PlanSettings(points=12, target_error=0.02)), make_executor())
    adaptive = (plan_rows(folder / "adaptive.sqlite"), res.note.split(";")[0])
    cap = int(formula({**BOUNDARY_SHAPE, "batch_size": BOUNDARY_BEST}) + 1)
    grid = load_grid(None, {**{k: [v] for k, v in BOUNDARY_SHAPE.items()}, "batch_size": [1, 64]})
    res = run_sweep(grid, SweepOptions(folder / "boundary.sqlite", device="cpu", quiet=True, emulate_bytes=cap),
                    BoundaryChooser(), make_executor())
    return adaptive, (plan_rows(folder / "boundary.sqlite"), [b.best for b in res.boundaries])
