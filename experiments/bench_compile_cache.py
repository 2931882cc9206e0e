"""Benchmark a compiled sweep with and without the per-sweep Inductor cache (issue 17).

    python experiments/bench_compile_cache.py [--grid experiments/grids/compile_cpu.toml] [--device cpu] [--out FILE.md]

Runs the grid twice in fresh databases: with the sweep's shared cache (VRAMFIT_COMPILE_CACHE=1; the default on
CUDA) and with every Inductor cache off (VRAMFIT_COMPILE_CACHE=0; the default on the CPU). A table per run: each
point's compile seconds (Dynamo's timers), whether it hit the cache, its readings, and the sweep's total wall
time; then whether the readings are the same with and without the cache. Provenance (commit, torch, device, load
average) heads the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vramfit.measure.provenance import git_commit  # noqa: E402
from vramfit.store import Store  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.pool import CACHE_ENV  # noqa: E402
from vramfit.sweep.progress import point_label  # noqa: E402
from vramfit.sweep.session import SweepOptions, run_sweep  # noqa: E402
from vramfit.sweep.whole_grid import GridChooser  # noqa: E402

READING = {"cpu": ("tracked_bytes", "rss_bytes"), "cuda": ("nvml_bytes", "reserved_bytes", "allocated_bytes")}


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def one(grid, device: str, cache: bool) -> tuple[list[str], dict]:
    os.environ[CACHE_ENV] = "1" if cache else "0"
    db = str(Path(tempfile.mkdtemp(prefix="bench_compile_")) / "bench.sqlite")
    before, t0 = load(), time.time()
    res = run_sweep(grid, SweepOptions(db, device=device, redo=True, quiet=True), GridChooser())
    wall = time.time() - t0
    df = Store(db).points_frame()
    df = df[df.sweep_id == res.sweep_id]
    kind = "cuda" if (df.device_type == "cuda").any() else "cpu"
    cols = READING[kind]
    extras = Store(db).point_extras([int(i) for i in df.point_id])
    lines = [f"### cache {'shared (per sweep)' if cache else 'off'}: {len(df)} points, total wall {wall:.1f} s, "
             f"load average {before} before, {load()} after", "",
             "| point | status | cache | compile s | wall s | " + " | ".join(cols) + " |",
             "|---|---|---|---:|---:|" + "---:|" * len(cols)]
    readings = {}
    for _, p in df.iterrows():
        e, t = extras[int(p.point_id)], json.loads(p.timings or "{}")
        readings[point_label(p)] = tuple(int(p[c]) if p[c] == p[c] else None for c in cols)
        lines.append(f"| {point_label(p)} | {p.status} | {e.get('compile_cache')} | "
                     f"{(e.get('compile_s') or 0):.1f} | {t.get('wall', 0):.1f} | "
                     + " | ".join(str(v) for v in readings[point_label(p)]) + " |")
    return lines + [""], {"wall": wall, "readings": readings, "cols": cols}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(Path(__file__).parent / "grids" / "compile_cpu.toml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    grid = load_grid(args.grid)
    commit = git_commit(Path(__file__).parent)
    out = [f"# experiments/bench_compile_cache.py, {time.strftime('%Y-%m-%d %H:%M')}, commit {commit}, torch "
           f"{torch.__version__}, grid {grid.name}, device {args.device}, {os.cpu_count()} cores", ""]
    runs = {}
    for cache in (True, False):
        lines, runs[cache] = one(grid, args.device, cache)
        out += lines
        print("\n".join(lines), flush=True)
    cols, on, off = runs[True]["cols"], runs[True]["readings"], runs[False]["readings"]
    none = (None,) * len(cols)
    same = [all(on[k][i] == off.get(k, none)[i] for k in on) for i in range(len(cols))]
    verdict = ", ".join(f"{c} {'identical' if ok else 'DIFFERENT'}" for c, ok in zip(cols, same, strict=True))
    out += [f"readings with and without the cache: {verdict}; total wall {runs[True]['wall']:.1f} s shared "
            f"against {runs[False]['wall']:.1f} s off ({runs[False]['wall'] / runs[True]['wall']:.1f}x)", ""]
    print(out[-2])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(out))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
