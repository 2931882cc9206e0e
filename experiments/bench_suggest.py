"""Time `suggest` over the whole default search space (target: < 1 s), for each objective, as a table; with
--no-profile, the whole `vramfit suggest --no-profile` command cold (empty cache) and warm (target, issue 28: warm
< 2 s, cold <= 15 s on 2 idle cores), with its peak RSS (the largest process of its tree: itself or a worker).

Measured on this project's 2-core VM, `--no-profile` with the defaults (8G, sm86, vocabulary 50304), shared with
other jobs: cold 28 estimates, 142 CPU s, 1219 s wall at load 12 (calibration at batch 4 and 64, cuts along the
calibrated slope, one-size traces); before, 47 estimates, 220 CPU s, 602 s wall at load 10.6 (calibration at batch
1 and 8, which under-predicted the re-checked configs by 13-37 %: three re-check rounds). Warm: 0 estimates, 1.1 CPU
s. Compare the CPU seconds: the wall time measures the neighbours.

    python experiments/bench_suggest.py [--model results/models/X.json] [--vram 8G] [--repeat 5]
    python experiments/bench_suggest.py --no-profile [--capability 8.6] [--vram 8G] [--repeat 3] [--workers N]

Without --model it fits the model to synthetic points from known coefficients (the timing does not depend on
the coefficients, only on the size of the space). CPU seconds (user + sys of the whole tree) and the load
average are printed beside wall time: on a shared machine wall time measures the neighbours too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from vramfit.fit.memmodel import fit_points
from vramfit.fit.profile import Profile  # noqa: E402
from vramfit.plan.suggest import OBJECTIVES, enumerate_space, suggest  # noqa: E402
from vramfit.units import parse_size  # noqa: E402

# runs one command as its child and reports the tree's wall time, CPU time and largest RSS (ru_maxrss of children)
WRAP = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall": wall, "cpu": u.ru_utime + u.ru_stime, "maxrss_kib": u.ru_maxrss,
                  "out": r.stdout, "err": r.stderr[-2000:]}))
"""


def run_tree(cmd: list[str], env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env)
    return json.loads(r.stdout)


def bench_no_profile(args) -> None:
    """`vramfit suggest --no-profile` cold (empty cache) then warm, in fresh interpreters."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if args.workers:
        env["VRAMFIT_WORKERS"] = str(args.workers)
    print(f"vramfit suggest --vram {args.vram} --no-profile --capability {args.capability}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print("| run | wall s | CPU s (tree) | peak RSS MiB | estimates run | from cache | load avg |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vramfit", "suggest", "--vram", args.vram, "--no-profile", "--capability",
               args.capability, "--cache-dir", str(Path(tmp) / "cache"), "--json", "--suggestions-file",
               str(Path(tmp) / "s.json")]
        for label in ["cold"] + ["warm"] * args.repeat:
            r = run_tree(cmd, env)
            if r["rc"] != 0:
                raise SystemExit(f"suggest failed: {r['err']}")
            dry = json.loads(r["out"])["dry_run"]
            print(f"| {label} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['maxrss_kib'] / 1024:.0f} | "
                  f"{dry['estimates_run']} | {dry['from_cache']} | {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--vram", default="8G")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true", help="time the dry-run path, cold and warm")
    ap.add_argument("--capability", default="8.6")
    ap.add_argument("--workers", type=int, help="estimator workers (default: the cores available)")
    args = ap.parse_args()
    if args.no_profile:
        bench_no_profile(args)
        return
    if args.model:
        doc = Profile.load(args.model)
        model, margin = doc.model, doc.margin_rel
    else:
        from planner_data import synthetic_points

        report = fit_points(synthetic_points(), target="nvml")
        model, margin = report.model, report.margin_rel
    space = enumerate_space()
    print(f"default space: {len(space['n_layer']):,} configs (shape x block x batch), budget {args.vram}")
    print("| objective | median s | min s | suggestions |")
    print("|---|---|---|---|")
    budget = parse_size(args.vram)
    for objective in OBJECTIVES:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            items = suggest(model, margin, budget, objective=objective, top=10)
            times.append(time.perf_counter() - t)
        print(f"| {objective} | {statistics.median(times):.3f} | {min(times):.3f} | {len(items)} |")


if __name__ == "__main__":
    main()
