"""Throughput model accuracy on held-out shapes, and the timing noise floor it cannot beat.

    python experiments/bench_throughput.py [--device cpu] [--repeats 3] [--reuse]

Each repeat sweeps the quick grid (experiments/grids/quick.toml, 13 points) and the held-out grid
(experiments/grids/quick_heldout.toml: 12 shapes at values no grid measures) into fresh databases, fits the
throughput model on the quick grid (`vramfit.fit.throughput.fit_throughput`) and scores it:
- held-out, best step: predicted best-step ms/iter (the shape law) vs each held-out point's fastest timed step;
- held-out, typical: predicted ms/iter (best x the fitted slowdown) vs the point's median step (what a run sees);
- shape-held-out CV on the quick grid itself (that includes extrapolating to its single-point corners: 4 layers
  at vocab 65, vocab 256 at width 256);
each beside the FLOPs + overhead baseline. Across repeats, the same quick-grid point's spread (max/min - 1) of
its best and its median step is the machine's noise floor.

Writes results/bench/throughput-<device>.csv (one row per repeat and metric, provenance columns included) and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from bench_accuracy import code_hash, measure, provenance, write_table  # noqa: E402

from vramfit.fit.throughput import fit_throughput, frame_time_features, timed_points  # noqa: E402
from vramfit.shape import KEYS  # noqa: E402

GRIDS = ROOT / "experiments" / "grids"


def rel(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(y) - 1)


def score_repeat(quick: pd.DataFrame, held: pd.DataFrame) -> list[dict]:
    """One repeat: fit on the quick grid's points, score held-out and CV errors for ours and FLOPs-only."""
    tp = fit_throughput(quick)
    held = timed_points(held)
    if tp is None or held.empty:
        sys.exit(f"error: too few timed points to score (quick grid: {len(timed_points(quick))}, held-out: "
                 f"{len(held)}); see the sweep's errors with `vramfit runs --db ...`")
    Xh = frame_time_features(held)
    rows = []
    for name, model in (("ours", tp.model), ("flops", tp.baseline)):
        for metric, err in (("held-out best step", rel(model.predict_best(Xh), held["ms_best"])),
                            ("held-out typical step", rel(model.predict(Xh), held["ms_per_iter"]))):
            rows.append({"model": name, "metric": metric, "n": len(err), "mape": err.mean(), "max": err.max()})
        for how, label in (("grouped", "quick-grid CV, shape held out, best step"),
                           ("grouped_typical", "quick-grid CV, shape held out, typical step")):
            m = tp.metrics[name][how]
            rows.append({"model": name, "metric": label, "n": m["n"], "mape": m["mape"], "max": m["max_rel"]})
    for r in rows:
        r["slowdown"] = tp.model.slowdown
    return rows


def noise_floor(quicks: list[pd.DataFrame]) -> list[dict]:
    """Per quick-grid point, the spread of its best and its median step across the repeats."""
    if len(quicks) < 2:
        return []
    frames = [timed_points(q).groupby(list(KEYS))[["ms_best", "ms_per_iter"]].min() for q in quicks]
    rows = []
    for col, label in (("ms_best", "run-to-run spread, best step"), ("ms_per_iter", "run-to-run spread, median step")):
        w = pd.concat([f[col] for f in frames], axis=1).dropna()
        spread = w.max(axis=1) / w.min(axis=1) - 1
        rows.append({"model": "measurement", "metric": label, "n": len(w), "mape": spread.mean(), "max": spread.max()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", default=str(GRIDS / "quick.toml"))
    ap.add_argument("--heldout", default=str(GRIDS / "quick_heldout.toml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--reuse", action="store_true", help="keep earlier databases (re-score only)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code0 = code_hash()

    rows, quicks = [], []
    for r in range(1, args.repeats + 1):
        quick = measure(Path(args.quick), out / f"tp-quick-{r}.sqlite", args.device, not args.reuse)
        held = measure(Path(args.heldout), out / f"tp-heldout-{r}.sqlite", args.device, not args.reuse)
        quicks.append(quick)
        rows += [{"repeat": r, **x} for x in score_repeat(quick, held)]
    rows += [{"repeat": "all", "slowdown": np.nan, **x} for x in noise_floor(quicks)]

    table = pd.DataFrame(rows)
    prov = provenance(quicks[0], code0)
    csv = write_table(table, prov, out, "throughput")

    print(f"{prov['device']} ({prov['device_type']}), torch {prov['torch']}, commit {prov['commit']}\n")
    print("| repeat | model | metric | n | MAPE | max | slowdown |")
    print("|---|---|---|---:|---:|---:|---:|")
    for _, x in table.iterrows():
        sd = "" if pd.isna(x.slowdown) else f"{x.slowdown:.3f}"
        print(f"| {x['repeat']} | {x.model} | {x.metric} | {x.n} | {x.mape:.2%} | {x['max']:.2%} | {sd} |")
    ours = table[(table.model == "ours") & table.metric.str.startswith("held-out")]
    for metric, g in ours.groupby("metric"):
        print(f"\nours, {metric}: MAPE {g.mape.mean():.2%} (mean of {len(g)} repeats), "
              f"worst point {g['max'].max():.2%}")
    print(f"wrote {csv}")


if __name__ == "__main__":
    main()
