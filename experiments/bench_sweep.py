"""Benchmark `vramfit sweep`: seconds per point and where they go, as a markdown table.

    python experiments/bench_sweep.py [--grid experiments/grids/quick.toml] [--device cpu] [--db PATH]

Columns (seconds, from the worker's own clock and the parent's): spawn = fork/exec + interpreter start,
import = torch (+ torch._dynamo, which torch.optim imports on first use) + gpt + vramfit, warmup = the CPU
warm-up step on a 1-layer batch-1 copy, build = model + optimizer (CUDA: context), first = first iteration
(torch.compile on CUDA), rest = the remaining iterations to stability, exit = process teardown (the worker
leaves with os._exit once its record is out), wall = what the point cost the sweep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vramfit.store import Store  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.progress import point_label  # noqa: E402
from vramfit.sweep.runner import run_sweep  # noqa: E402

COLS = ("spawn", "import", "warmup", "build", "first", "rest", "exit", "wall")


def row(t: dict) -> dict[str, float]:
    out = {
        "spawn": t.get("process_start") or 0.0, "import": t.get("import") or 0.0, "warmup": t.get("warmup") or 0.0,
        "build": t.get("build") or 0.0, "first": t.get("first_iter") or 0.0, "rest": t.get("iters") or 0.0,
        "wall": t.get("wall") or 0.0,
    }
    out["exit"] = max(0.0, out["wall"] - out["spawn"] - (t.get("total") or 0.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(Path(__file__).parent / "grids" / "quick.toml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--db", default=None, help="default: a temporary file (always a fresh sweep)")
    args = ap.parse_args()
    db = args.db or str(Path(tempfile.mkdtemp(prefix="bench_sweep_")) / "bench.sqlite")
    grid = load_grid(args.grid)
    t0 = time.time()
    res = run_sweep(grid, db, device=args.device, redo=True, quiet=True)
    elapsed = time.time() - t0
    df = Store(db).points_frame()
    df = df[df.sweep_id == res.sweep_id]
    print(f"grid {grid.name}, device {df.device_name.iloc[0]}, torch {df.torch_version.iloc[0]}: "
          f"{len(df)} points in {elapsed:.1f} s ({elapsed / max(1, len(df)):.2f} s/point)\n")
    print("| point | status | iters | " + " | ".join(COLS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLS))
    rows = []
    for _, p in df.iterrows():
        r = row(json.loads(p.timings) if p.timings else {})
        rows.append(r)
        print(f"| {point_label(p)} | {p.status} | {p.iters:.0f} | " + " | ".join(f"{r[c]:.2f}" for c in COLS) + " |")
    means = {c: statistics.mean(r[c] for r in rows) for c in COLS}
    print("| **mean** | | | " + " | ".join(f"**{means[c]:.2f}**" for c in COLS) + " |")
    share = {c: means[c] / means["wall"] * 100 for c in COLS if c != "wall"}
    print("\nshare of wall: " + ", ".join(f"{c} {v:.0f}%" for c, v in share.items()))


if __name__ == "__main__":
    main()
