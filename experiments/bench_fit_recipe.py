"""One CPU profile that varies the recipe's switches: memory and time held out, per recipe (issue 30).

    python experiments/bench_fit_recipe.py [--db FILE | --points results/bench/fit-recipe-cpu.csv]
                                           [--csv results/bench/fit-recipe-cpu.csv]
                                           [--out results/bench/fit-recipe-cpu.md]

Sweeps experiments/grids/recipe_cpu.toml on this CPU (`vramfit sweep`: 10 tiny GPTs x 18 recipes, every
combination of checkpoint none|all|2, grad_accum 1|2 and optimizer fused AdamW|SGD|Adafactor) into `--db` (a fresh
temporary database unless `--db` names one that exists: then its points are used as they are), fits the one
profile of the recipe family (`vramfit.fit.memmodel.fit_points`: RECIPE_PHYSICS and RECIPE_THROUGHPUT) and writes
the markdown report (cross-validated memory error, leave-one-out and shape held out, beside the naive
params + tokens line; the largest held-out error per recipe; the coefficients; the time model's held-out best-step
MAPE beside the FLOPs-only line) with its provenance, and the points as CSV (what `tests/test_recipe_fit.py`
refits). `--points CSV` refits points measured before (that CSV) without sweeping: on a shared CPU the timings
are the load's as much as the shape's, so a change of features is judged on the same readings. The report's
sections from `## Before and after` on are kept when it is rewritten (they are written by hand).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramfit.fit.memmodel import fit_points  # noqa: E402
from vramfit.measure.provenance import git_commit, software_versions  # noqa: E402
from vramfit.shape import KEYS  # noqa: E402
from vramfit.store import Store  # noqa: E402

GRID = ROOT / "experiments" / "grids" / "recipe_cpu.toml"
CSV_COLUMNS = ["device_name", "device_type", "recipe_key", "recipe", *KEYS, "status", "tracked_bytes", "rss_bytes",
               "ms_per_iter", "timings"]


def label(recipe: str) -> str:
    d = json.loads(recipe)
    return f"{d['optimizer']} / checkpoint {d.get('checkpoint', 'none')} / accum {d.get('grad_accum', 1)}"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def report(points, prov: dict) -> str:
    prof = fit_points(points)
    m, cv = prof.metrics, prof.cv.assign(recipe=points[points["status"] == "ok"]["recipe"].to_numpy())
    lines = [f"# One CPU profile over the recipe's switches ({prof.n_points} points, {len(prof.switches)} recipes)",
             "", "Regenerate: `python experiments/bench_fit_recipe.py` (sweeps experiments/grids/recipe_cpu.toml; "
             "`--points results/bench/fit-recipe-cpu.csv` refits the points below).",
             "", "Provenance: " + ", ".join(f"{k} {v}" for k, v in prov.items()), "",
             "## Memory (tracked bytes: the CPU's byte-exact analogue of the allocator's peak)", "",
             "| model | held out | MAPE | max abs error | worst under-prediction |", "| --- | --- | --- | --- | --- |"]
    for name, what in (("ours", "RECIPE_PHYSICS"), ("naive", "params + tokens")):
        for how, words in (("loo", "one point"), ("grouped", "its shape, every recipe")):
            r = m[name][how]
            lines.append(f"| {what} | {words} | {pct(r['mape'])} | {pct(r['max_rel'])} | "
                         f"{pct(r['worst_under_rel'])} |")
    cv["err"] = (cv["ours_loo"] / cv["measured"] - 1).abs()
    cv["err_g"] = (cv["ours_grouped"] / cv["measured"] - 1).abs()
    lines += ["", "Largest held-out error per recipe (one point held out / its shape held out):", "",
              "| recipe | points | max, point held out | max, shape held out |", "| --- | --- | --- | --- |"]
    for recipe, g in sorted(cv.groupby("recipe"), key=lambda kv: label(kv[0])):
        lines.append(f"| {label(recipe)} | {len(g)} | {pct(g['err'].max())} | {pct(g['err_g'].max())} |")
    lines += ["", "Coefficients (fitted on every point):", "", "| term | value | unit |", "| --- | --- | --- |"]
    lines += [f"| {c['term']} | {c['value']:.4g} | {c['unit']} |" for c in prof.model.coefficients()]
    tp = prof.throughput
    if tp is not None:
        lines += ["", "## Time per optimizer step (best timed step: the CPU time it used, threads = 1)", "",
                  "| model | held out | MAPE | max abs error |", "| --- | --- | --- | --- |"]
        for name, what in (("ours", "RECIPE_THROUGHPUT"), ("flops", "FLOPs + constant")):
            for how, words in (("loo", "one point"), ("grouped", "its shape, every recipe")):
                r = tp.metrics[name][how]
                lines.append(f"| {what} | {words} | {pct(r['mape'])} | {pct(r['max_rel'])} |")
        lines += ["", "| term | value | unit |", "| --- | --- | --- |"]
        lines += [f"| {c['term']} | {c['value']:.4g} | {c['unit']} |" for c in tp.model.coefficients()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="an existing database of the grid's points (default: sweep afresh)")
    ap.add_argument("--points", type=Path, help="refit the points of this CSV (written by an earlier run)")
    ap.add_argument("--csv", type=Path, default=ROOT / "results" / "bench" / "fit-recipe-cpu.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "fit-recipe-cpu.md")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    if args.points:
        import pandas as pd

        points = pd.read_csv(args.points)
    else:
        db = args.db or Path(tempfile.mkdtemp(prefix="vramfit-recipe-")) / "recipe.sqlite"
        if not db.exists():
            subprocess.run([sys.executable, "-m", "vramfit.cli", "sweep", "--grid", str(GRID), "--db", str(db),
                            "--device", "cpu", "--quiet"], check=True, cwd=ROOT)
        with Store(db) as store:
            points = store.points_frame()
        points = points[points["source"].fillna("sweep") == "sweep"].reset_index(drop=True)
    versions = software_versions()
    prov = {"date": datetime.date.today().isoformat(), "commit": git_commit(ROOT), "torch": versions.get("torch"),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "device": points["device_name"].iloc[0],
            "load average at the start / end": f"{load0:.1f} / {os.getloadavg()[0]:.1f}"}
    if args.points:
        prov["points"] = f"{args.points.name} as measured before (refit, not swept again)"
    kept = args.out.read_text().partition("\n## Before and after") if args.out.exists() else ("", "", "")
    args.out.write_text(report(points, prov) + (kept[1] + kept[2] if kept[1] else ""))
    if not args.points:
        points[CSV_COLUMNS].to_csv(args.csv, index=False)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
