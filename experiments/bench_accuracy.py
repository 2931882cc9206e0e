"""Accuracy per minute of profiling: full grid vs the quick grid vs random N vs adaptive N points.

    python experiments/bench_accuracy.py [--device cpu] [--points 12] [--target-error 0.03] [--reuse]

On one device, measures (fresh by default; `--reuse` keeps earlier databases under results/bench/):
- the full candidate grid (experiments/grids/quick_span.toml on a CPU: 64 points),
- the quick grid (experiments/grids/quick.toml: 13 hand-designed points),
- an adaptive plan over the candidate grid (`vramfit sweep --plan adaptive --points N`), run for real,
- random N: N points of the candidate grid drawn at random (several seeds), N = what the adaptive plan used;
  their readings and wall times are the full grid's own measurements of those points,
and a separate held-out set (experiments/grids/quick_heldout.toml: shapes at values no grid measures). Each
design's points fit our physics model and the naive params+tokens line; both are scored on the held-out set
(max and mean |relative error|). Wall time is the sweep's cost: the sum of its points' worker wall times
(process start to exit) for grids, and the planning run's clock (estimates and fits included) for adaptive.

Writes results/bench/accuracy-<device>.csv (one row per design, provenance columns included) and a markdown table
on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramfit.fit.features import NAIVE, PHYSICS, frame_features  # noqa: E402
from vramfit.fit.memmodel import TARGETS, MemoryModel  # noqa: E402
from vramfit.measure.provenance import git_commit  # noqa: E402
from vramfit.store import Store  # noqa: E402
from vramfit.sweep.adaptive import AdaptiveChooser, PlanSettings  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.session import SweepOptions, run_sweep  # noqa: E402
from vramfit.sweep.whole_grid import GridChooser  # noqa: E402

GRIDS = ROOT / "experiments" / "grids"


def measure(grid_path: Path, db: Path, device: str, fresh: bool) -> pd.DataFrame:
    """Sweep a grid into its own database (fresh: delete it first); its points."""
    if fresh:
        for p in db.parent.glob(db.name + "*"):
            p.unlink()
    run_sweep(load_grid(grid_path), SweepOptions(db, device=device, quiet=True), GridChooser())
    with Store(db) as s:
        return s.points_frame()


def wall(df: pd.DataFrame) -> float:
    return float(sum(json.loads(t).get("wall", 0.0) for t in df["timings"] if isinstance(t, str)))


def score(train: pd.DataFrame, held: pd.DataFrame, col: str) -> dict:
    """Fit ours and naive on `train` (ok rows), score both on `held`."""
    train = train[(train.status == "ok") & train[col].notna()]
    y = held[col].to_numpy(dtype=float)
    out = {"n_ok": len(train)}
    for name, feats, regimes in (("ours", PHYSICS, 2), ("naive", NAIVE, 1)):
        m = MemoryModel(feats, regimes=regimes).fit(frame_features(train), train[col].to_numpy(dtype=float))
        rel = np.abs(m.predict(frame_features(held)) - y) / y
        out[f"{name}_max"], out[f"{name}_mean"] = float(rel.max()), float(rel.mean())
    return out


def code_hash() -> str:
    """Hash of the code that decides the readings (trainer, model, worker, probes): must not change mid-run."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(ROOT / "gpt").glob("*.py"), *(ROOT / "vramfit" / "measure").glob("*.py")]):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def provenance(points: pd.DataFrame, code0: str, **extra) -> dict:
    """Where and with what a benchmark measured: device, torch, recipe, host, commit, date, code hash."""
    prov = {"device": str(points.device_name.iloc[0]), "device_type": str(points.device_type.iloc[0]),
            "torch": str(points.torch_version.iloc[0]), "recipe_key": str(points.recipe_key.iloc[0]), **extra,
            "host": platform.node(), "python": platform.python_version(), "commit": git_commit(ROOT),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "code_hash": code0}
    if code_hash() != code0:
        print("WARNING: gpt/ or the worker changed during the benchmark: its points saw different trainers; rerun")
        prov["code_hash"] = f"{code0}->{code_hash()} (changed mid-run: invalid)"
    return prov


def write_table(table: pd.DataFrame, prov: dict, out: Path, name: str) -> Path:
    """`table` with the provenance columns -> out/<name>-<device>.csv; the path."""
    for k, v in prov.items():
        table[k] = v
    slug = "cpu" if prov["device_type"] == "cpu" else prov["device"].lower().replace(" ", "-")
    csv = out / f"{name}-{slug}.csv"
    table.to_csv(csv, index=False)
    return csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", default=str(GRIDS / "quick_span.toml"), help="candidate grid (the full grid)")
    ap.add_argument("--quick", default=str(GRIDS / "quick.toml"), help="the hand-designed small grid")
    ap.add_argument("--heldout", default=str(GRIDS / "quick_heldout.toml"), help="held-out points")
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--target-error", type=float, default=0.03)
    ap.add_argument("--seeds", type=int, default=5, help="random designs to draw")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--reuse", action="store_true", help="keep earlier full/quick/held-out databases")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = not args.reuse
    code0 = code_hash()

    full = measure(Path(args.full), out / "full.sqlite", args.device, fresh)
    quick = measure(Path(args.quick), out / "quick.sqlite", args.device, fresh)
    held = measure(Path(args.heldout), out / "heldout.sqlite", args.device, fresh)
    col = TARGETS["nvml" if full.device_type.iloc[0] == "cuda" else "tracked"]
    held = held[(held.status == "ok") & held[col].notna()]

    adb = out / "adaptive.sqlite"
    for p in out.glob("adaptive.sqlite*"):
        p.unlink()
    settings = PlanSettings(points=args.points, target_error=args.target_error)
    t0 = time.time()
    res = run_sweep(load_grid(Path(args.full)), SweepOptions(adb, device=args.device, quiet=True),
                    AdaptiveChooser(settings))
    adaptive_wall = time.time() - t0
    with Store(adb) as s:
        adaptive = s.points_frame()
    n = len(adaptive)

    rows = []

    def add(design: str, df: pd.DataFrame, seconds: float, note: str = "") -> None:
        rows.append({"design": design, "points": len(df), "wall_s": round(seconds, 1), **score(df, held, col),
                     "note": note})

    add(f"full grid ({Path(args.full).stem})", full, wall(full))
    add(f"quick grid ({Path(args.quick).stem})", quick, wall(quick))
    rng = np.random.default_rng(0)
    rand = []
    for seed in range(args.seeds):
        pick = full.iloc[rng.choice(len(full), size=min(n, len(full)), replace=False)]
        rand.append({"wall": wall(pick), **score(pick, held, col), "seed": seed})
    r = pd.DataFrame(rand)
    rows.append({"design": f"random {n} (mean of {args.seeds})", "points": n, "wall_s": round(r.wall.mean(), 1),
                 "n_ok": n, **{c: float(r[c].mean()) for c in ("ours_max", "ours_mean", "naive_max", "naive_mean")},
                 "note": f"worst seed: ours max {r.ours_max.max():.2%}"})
    add(f"adaptive {n} (--points {args.points})", adaptive, adaptive_wall, res.note)

    table = pd.DataFrame(rows)
    prov = provenance(full, code0, target=col, heldout_points=len(held), target_error=args.target_error)
    csv = write_table(table, prov, out, "accuracy")

    print(f"{prov['device']} ({prov['device_type']}), torch {prov['torch']}, target {col}, "
          f"{len(held)} held-out points, commit {prov['commit']}\n")
    print("| design | points | sweep wall (s) | ours max | ours mean | naive max | naive mean |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for _, x in table.iterrows():
        print(f"| {x.design} | {x.points} | {x.wall_s:.0f} | {x.ours_max:.2%} | {x.ours_mean:.2%} | "
              f"{x.naive_max:.2%} | {x.naive_mean:.2%} |")
    print(f"\nadaptive: {res.note}\nwrote {csv}")


if __name__ == "__main__":
    main()
