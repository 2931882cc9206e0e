"""Benchmark a compiled sweep's points with a static and a dynamic batch dimension (issue 17, item 2).

    python experiments/bench_dynamic_batch.py [--grid experiments/grids/compile_cpu.toml] [--device cpu]
                                              [--out FILE.md] [--arms static-off,dynamic-off,...] [--fresh]

Runs the grid (points that differ only in batch size) through the real sweep (`run_sweep`: a fresh worker per
point) in four arms, each in a fresh database:

- static-off / dynamic-off: every Inductor cache off (VRAMFIT_COMPILE_CACHE=0), so every point compiles from
  scratch: the only difference is the batch dimension (`--static-batch` / `--dynamic-batch`). Their readings are
  compared: the dynamic path may be the default only where they are the same.
- static-shared / dynamic-shared: the sweep's shared Inductor cache (VRAMFIT_COMPILE_CACHE=1): whether points
  2..n reuse the first point's compilation (FX graph cache hits, compile seconds) and what that does to the
  readings.

Per point: the readings (CPU: tracked bytes, peak RSS, and the CPU allocator's peak during one steady step, which
counts Inductor's buffers; CUDA: NVML, reserved, allocated), compile seconds, cache hits, the graphs Dynamo
compiled for the measured trainer and whether their batch size was symbolic. Each finished arm is saved in
`<out>.json`, so a run cut off (gpu_evidence.sh's time limit) resumes with the arms not done (--fresh: all again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vramfit.measure.provenance import git_commit  # noqa: E402
from vramfit.store import Store  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.pool import CACHE_ENV  # noqa: E402
from vramfit.sweep.progress import point_label  # noqa: E402
from vramfit.sweep.session import SweepOptions, run_sweep  # noqa: E402
from vramfit.sweep.whole_grid import GridChooser  # noqa: E402

READING = {"cpu": ("tracked_bytes", "tracked_dispatch_bytes", "rss_bytes", "alloc_step_peak_bytes"),
           "cuda": ("nvml_bytes", "reserved_bytes", "allocated_bytes")}
ARMS = {"static-off": (False, False), "dynamic-off": (True, False), "static-shared": (False, True),
        "dynamic-shared": (True, True)}  # name -> (dynamic batch, shared cache)
RSS_TOLERANCE = 0.03, 2 * 2**20  # the project's RSS tolerance (tests/test_ray.py): 3 % + 2 MiB
EXTRA = ("compile_cache", "compile_s", "fxgraph_cache_hits", "fxgraph_cache_misses", "dynamo_graphs",
         "batch_symbolic", "dynamic_batch", "alloc_step_peak_bytes")


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_arm(grid, device: str, dynamic: bool, shared: bool) -> dict:
    """One sweep of the grid; every point's readings, compile facts and wall time."""
    os.environ[CACHE_ENV] = "1" if shared else "0"
    grid = replace(grid, measure=replace(grid.measure, dynamic_batch=dynamic))
    db = str(Path(tempfile.mkdtemp(prefix="bench_dynamic_")) / "bench.sqlite")
    before, t0 = load(), time.time()
    res = run_sweep(grid, SweepOptions(db, device=device, redo=True, quiet=True), GridChooser())
    wall = time.time() - t0
    with Store(db) as store:
        df = store.points_frame()
        df = df[df.sweep_id == res.sweep_id]
        extras = store.point_extras([int(i) for i in df.point_id])
    points = []
    for _, p in df.iterrows():
        e, t = extras[int(p.point_id)], json.loads(p.timings or "{}")
        row = {"label": point_label(p), "batch_size": int(p.batch_size), "status": p.status,
               "device_type": p.device_type, "wall_s": t.get("wall"), "error": p.error}
        for c in READING["cuda" if p.device_type == "cuda" else "cpu"]:
            v = p.get(c) if c in p else e.get(c)
            row[c] = int(v) if v is not None and v == v else None
        row.update({k: e.get(k) for k in EXTRA if k not in row})
        points.append(row)
    return {"points": points, "wall_s": wall, "load_before": before, "load_after": load()}


def arm_table(name: str, arm: dict, cols: tuple[str, ...]) -> list[str]:
    head = (f"### {name}: {len(arm['points'])} points, total wall {arm['wall_s']:.1f} s, load average "
            f"{arm['load_before']} before, {arm['load_after']} after")
    lines = [head, "", "| point | status | batch symbolic | Dynamo graphs | cache | FX hits/misses | compile s | "
             "wall s | " + " | ".join(cols) + " |", "|---|---|---|---:|---|---|---:|---:|" + "---:|" * len(cols)]
    for p in arm["points"]:
        lines.append(f"| {p['label']} | {p['status']} | {p.get('batch_symbolic')} | {p.get('dynamo_graphs')} | "
                     f"{p.get('compile_cache')} | {p.get('fxgraph_cache_hits')}/{p.get('fxgraph_cache_misses')} | "
                     f"{(p.get('compile_s') or 0):.1f} | {(p.get('wall_s') or 0):.1f} | "
                     + " | ".join(str(p.get(c)) for c in cols) + " |")
        if p["status"] != "ok":
            lines.append(f"|  | error: {str(p.get('error'))[:150]} |" + " |" * (7 + len(cols)))
    return lines + [""]


def compare(static: dict, dynamic: dict, cols: tuple[str, ...], what: str) -> tuple[list[str], bool | None]:
    """Static vs dynamic readings per batch size; (table lines, same?) where RSS may differ by the tolerance and
    every other reading must be byte-identical. None when a point did not run in both."""
    s_by = {p["batch_size"]: p for p in static["points"]}
    d_by = {p["batch_size"]: p for p in dynamic["points"]}
    lines = [f"### static vs dynamic, {what}", "",
             "| batch | " + " | ".join(f"{c} static | dynamic | diff" for c in cols) + " |",
             "|---:|" + "---:|---:|---:|" * len(cols)]
    same: bool | None = True
    for b in sorted(set(s_by) | set(d_by)):
        s, d = s_by.get(b), d_by.get(b)
        if not s or not d or s["status"] != "ok" or d["status"] != "ok":
            same = None
            lines.append(f"| {b} | not measured ok in both |")
            continue
        cells = []
        for c in cols:
            a, z = s.get(c), d.get(c)
            if a is None or z is None:
                cells.append(f"{a} | {z} | n/a")
                continue
            diff = z - a
            cells.append(f"{a} | {z} | {diff:+d} ({diff / a:+.2%})" if a else f"{a} | {z} | {diff:+d}")
            tol = RSS_TOLERANCE[0] * a + RSS_TOLERANCE[1] if c == "rss_bytes" else 0
            if abs(diff) > tol and same is not None:
                same = False
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines + [""], same


def provenance(device: str, grid) -> str:
    import torch

    commit = git_commit(Path(__file__).parent)
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        where = f"cpu {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return (f"# experiments/bench_dynamic_batch.py, {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}"
            f", torch {torch.__version__}, device {where}, grid "
            f"{grid.name} ({grid.recipe.dtype}, compile={grid.recipe.compile}), load average {load()} at the start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(Path(__file__).parent / "grids" / "compile_cpu.toml"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"some of {', '.join(ARMS)}")
    ap.add_argument("--fresh", action="store_true", help="run every arm again (ignore <out>.json)")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"error: unknown arm {bad[0]!r} (arms: {', '.join(ARMS)})")
    grid = load_grid(args.grid)
    state_path = Path(args.out + ".json") if args.out else None
    state = json.loads(state_path.read_text()) if state_path and state_path.is_file() and not args.fresh else {}
    if state.get("grid") != grid.to_dict():
        state = {"grid": grid.to_dict(), "provenance": provenance(args.device, grid), "arms": {}}
    for name in arms:
        if name in state["arms"]:
            print(f"{name}: done before (in {state_path}), kept", flush=True)
            continue
        print(f"{name}: sweeping {len(grid.points()[0])} points ...", flush=True)
        state["arms"][name] = run_arm(grid, args.device, *ARMS[name])
        if state_path:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(state, indent=1))
    report = render(state, arms)
    print("\n".join(report))
    if args.out:
        Path(args.out).write_text("\n".join(report))
        print(f"wrote {args.out}")


def render(state: dict, arms: list[str]) -> list[str]:
    done = {a: state["arms"][a] for a in arms if a in state["arms"]}
    kinds = {p["device_type"] for arm in done.values() for p in arm["points"]}
    cols = READING["cuda" if "cuda" in kinds else "cpu"]
    out = [state["provenance"], ""]
    for name, arm in done.items():
        out += arm_table(name, arm, cols)
    verdicts = []
    for cache in ("off", "shared"):
        s, d = done.get(f"static-{cache}"), done.get(f"dynamic-{cache}")
        if s and d:
            lines, same = compare(s, d, cols, f"cache {cache}")
            out += lines
            word = {True: "the same", False: "DIFFERENT", None: "not comparable (a point failed)"}[same]
            verdicts.append(f"cache {cache}: readings static vs dynamic {word} "
                            f"(the criterion: byte-identical, RSS within 3 % + 2 MiB)")
    out += [f"- {v}" for v in verdicts] + [""]
    return out


if __name__ == "__main__":
    main()
