"""Benchmark `vramfit sweep`: seconds per point and where they go, spawned workers against the fork server.

    python experiments/bench_sweep.py [--grid experiments/grids/quick.toml] [--device cpu] [--workers spawn,fork]
                                      [--out results/bench/sweep-workers-cpu.md]

Columns (seconds, from the worker's own clock and the parent's): spawn = fork/exec + interpreter start (forked:
the request to the fork server and the fork), import = torch (+ torch._dynamo, which torch.optim imports on first
use) + gpt + vramfit (forked: done once by the fork server), warmup = the CPU warm-up step on a 1-layer batch-1
copy, build = model + optimizer (CUDA: context), first = first iteration (torch.compile on CUDA), rest = the
remaining iterations to stability, exit = process teardown (the worker leaves with os._exit once its record is
out), wall = what the point cost the sweep. overhead = spawn + import + exit: what a fresh process costs a point.

With both worker modes, the readings are compared point by point: tracked bytes must be byte-identical, RSS within
RSS_TOLERANCE. Writes the tables with their provenance (commit, torch, CPU, load average) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vramfit.measure.provenance import git_commit  # noqa: E402
from vramfit.store import Store  # noqa: E402
from vramfit.sweep.executors import LocalExecutor  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.progress import point_label  # noqa: E402
from vramfit.sweep.session import SweepOptions, run_sweep  # noqa: E402
from vramfit.sweep.whole_grid import GridChooser  # noqa: E402

COLS = ("spawn", "import", "warmup", "build", "first", "rest", "exit", "overhead", "wall")
RSS_TOLERANCE = 0.03  # as the Ray executor's readings against the local ones (tests/test_ray.py)


def row(t: dict) -> dict[str, float]:
    out = {
        "spawn": t.get("process_start") or 0.0, "import": t.get("import") or 0.0, "warmup": t.get("warmup") or 0.0,
        "build": t.get("build") or 0.0, "first": t.get("first_iter") or 0.0, "rest": t.get("iters") or 0.0,
        "wall": t.get("wall") or 0.0,
    }
    out["exit"] = max(0.0, out["wall"] - out["spawn"] - (t.get("total") or 0.0))
    out["overhead"] = out["spawn"] + out["import"] + out["exit"]
    return out


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def sweep(grid, device: str, mode: str) -> tuple[list[str], dict, float, str]:
    """One fresh sweep in `mode`; (markdown lines, {label: (tracked, rss)}, mean wall per point, load before)."""
    db = str(Path(tempfile.mkdtemp(prefix=f"bench_sweep_{mode}_")) / "bench.sqlite")
    before = load()
    t0 = time.time()
    res = run_sweep(grid, SweepOptions(db, device=device, redo=True, quiet=True), GridChooser(),
                    LocalExecutor(fork=mode == "fork"))
    elapsed = time.time() - t0
    df = Store(db).points_frame()
    df = df[df.sweep_id == res.sweep_id]
    lines = [f"### {mode}: {len(df)} points in {elapsed:.1f} s ({elapsed / max(1, len(df)):.2f} s/point), "
             f"load average {before} before, {load()} after", "",
             "| point | status | iters | " + " | ".join(COLS) + " |", "|---|---|---:|" + "---:|" * len(COLS)]
    rows, readings = [], {}
    for _, p in df.iterrows():
        r = row(json.loads(p.timings) if p.timings else {})
        rows.append(r)
        readings[point_label(p)] = (int(p.tracked_bytes), int(p.rss_bytes))
        lines.append(f"| {point_label(p)} | {p.status} | {p.iters:.0f} | "
                     + " | ".join(f"{r[c]:.2f}" for c in COLS) + " |")
    means = {c: statistics.mean(r[c] for r in rows) for c in COLS}
    lines.append("| **mean** | | | " + " | ".join(f"**{means[c]:.2f}**" for c in COLS) + " |")
    share = {c: means[c] / means["wall"] * 100 for c in COLS if c not in ("wall", "overhead")}
    lines += ["", "share of wall: " + ", ".join(f"{c} {v:.0f}%" for c, v in share.items()), ""]
    return lines, readings, means, before


def compare(a: dict, b: dict) -> list[str]:
    """Point-by-point readings of the two modes."""
    lines = ["### readings: fork against spawn", "", "| point | tracked spawn | tracked fork | same | rss spawn | "
             "rss fork | rss diff |", "|---|---:|---:|---|---:|---:|---:|"]
    worst, same = 0.0, True
    for label, (t_s, r_s) in a.items():
        t_f, r_f = b.get(label, (None, None))
        if t_f is None:
            continue
        diff = (r_f - r_s) / r_s
        worst, same = max(worst, abs(diff)), same and t_f == t_s
        lines.append(f"| {label} | {t_s} | {t_f} | {'yes' if t_f == t_s else 'NO'} | {r_s} | {r_f} | {diff:+.2%} |")
    lines += ["", f"tracked byte-identical: {'yes' if same else 'NO'}; largest RSS difference {worst:.2%} "
                  f"(tolerance {RSS_TOLERANCE:.0%}): {'within' if worst <= RSS_TOLERANCE else 'OUTSIDE'}", ""]
    return lines


def provenance(grid, device: str) -> str:
    import torch

    commit = git_commit(Path(__file__).parent)
    return (f"experiments/bench_sweep.py, {time.strftime('%Y-%m-%d %H:%M')}, commit {commit}, "
            f"torch {torch.__version__}, grid {grid.name}, device {device}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            "(shared with other jobs: see the load averages)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(Path(__file__).parent / "grids" / "quick.toml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", default="spawn,fork", help="worker modes to run, in order")
    ap.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = ap.parse_args()
    grid = load_grid(args.grid)
    out = [f"# {provenance(grid, args.device)}", ""]
    readings, means = {}, {}
    for mode in args.workers.split(","):
        lines, readings[mode], means[mode], _ = sweep(grid, args.device, mode)
        out += lines
        print("\n".join(lines), flush=True)
    if {"spawn", "fork"} <= set(readings):
        lines = compare(readings["spawn"], readings["fork"])
        s, f = means["spawn"], means["fork"]
        lines += [f"overhead per point: spawn {s['overhead']:.2f} s, fork {f['overhead']:.2f} s; wall per point: "
                  f"spawn {s['wall']:.2f} s, fork {f['wall']:.2f} s ({s['wall'] / f['wall']:.1f}x)", ""]
        out += lines
        print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(out))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
