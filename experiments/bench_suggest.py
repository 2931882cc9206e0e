"""Time `suggest` over the whole default search space (target: < 1 s), for each objective, as a table.

    python experiments/bench_suggest.py [--model results/models/X.json] [--vram 8G] [--repeat 5]

Without --model it fits the model to synthetic points from known coefficients (the timing does not depend on
the coefficients, only on the size of the space).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from vramfit.fit.memmodel import fit_points, load_model  # noqa: E402
from vramfit.plan.suggest import OBJECTIVES, enumerate_space, suggest  # noqa: E402
from vramfit.units import parse_size  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--vram", default="8G")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.model:
        doc = load_model(args.model)
        model, margin = doc["model"], doc["margin_rel"]
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
