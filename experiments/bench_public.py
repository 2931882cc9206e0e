"""The dry-run estimator against public GPU readings: `vramfit estimate`'s whole-device figure beside each row of
vramfit/data/public_readings.toml, the error in % and GiB; writes results/bench/public-gpu.md (the table and its
sources) and vramfit/data/public_estimates.csv (the figures the no-profile planning margin is computed from,
`vramfit.validation.planning_margin`).

    python experiments/bench_public.py [--rows ID,ID [--md FILE --csv FILE]]

Each distinct config is estimated once, in a child process (`Estimator("child")` + `device_bytes`, what
`vramfit estimate` runs and prints as the device total). Gradient accumulation: micro-steps 3..N start from the
state micro-step 2 starts from (accumulated gradients, optimizer state), so their peak is micro-step 2's; a row
with N >= 2 micro-steps is estimated with 2 (checked: 2, 4 and 64 micro-steps give the same figure for GPT-2 124M
at batch 8, sm89; 64 takes 26 times as long). OOM rows are scored by whether the estimate exceeds the card; rows
the estimator cannot model are listed with the reason. Takes minutes: the load is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.config import GPTConfig  # noqa: E402
from vramfit.dryrun.estimate import EstimateRequest, device_bytes, parse_capability  # noqa: E402
from vramfit.dryrun.estimator import Estimator  # noqa: E402
from vramfit.recipe import Recipe  # noqa: E402
from vramfit.validation import (  # noqa: E402
    ESTIMATE_COLUMNS,
    ESTIMATES,
    MIB,
    Reading,
    load_readings,
    planning_margin,
    under_prediction,
)

MD = ROOT / "results" / "bench" / "public-gpu.md"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def estimator_key(r: Reading) -> tuple:
    """What the estimate depends on: rows that agree on it share one estimate."""
    return (tuple(sorted(r.model.items())), r.batch_size, min(r.grad_accum, 2), tuple(sorted(r.recipe.items())),
            r.capability, r.grad_clip)


def estimate(r: Reading) -> tuple[int, float]:
    """(whole-device bytes, seconds) of the row's config, as `vramfit estimate` computes it."""
    t = time.perf_counter()
    req = EstimateRequest(GPTConfig.from_dict(r.model), r.batch_size, Recipe.from_dict(r.recipe), "cuda",
                          parse_capability(r.capability), grad_clip=r.grad_clip,
                          gradient_accumulation_steps=min(r.grad_accum, 2))
    with Estimator("child") as estimator:
        est = estimator.estimate([req])[0]
    return device_bytes(est), time.perf_counter() - t


def gib(n: float) -> str:
    return f"{n / 2**30:+.2f}"


def table(readings: list[Reading], est: dict[str, int]) -> list[str]:
    """The markdown rows of the scored and OOM readings."""
    out = ["| row | GPU (cap.) | batch x micro-steps | reading | estimate | error | error GiB | needs margin |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in readings:
        if r.id not in est:
            continue
        e = est[r.id]
        head = f"| {r.id} | {r.gpu} ({r.capability}) | {r.batch_size} x {r.grad_accum} |"
        if r.kind == "oom":
            cap = r.gpu_total_bytes
            verdict = ("estimate exceeds the card: agrees" if cap and e > cap else "estimate fits: DISAGREES")
            out.append(f"{head} OOM ({r.value}) | {e / MIB:,.0f} MiB | {verdict} | | |")
            continue
        rb = r.reading_bytes
        out.append(f"{head} {r.value_mib:,} MiB | {e / MIB:,.0f} MiB | {(e - rb) / rb:+.1%} | {gib(e - rb)} | "
                   f"{max(0.0, under_prediction(rb, e)):.1%} |")
    return out


def sources(readings: list[Reading]) -> list[str]:
    out = []
    for sid in dict.fromkeys(r.source for r in readings):
        rows = [r for r in readings if r.source == sid]
        s = rows[0].settings
        out.append(f"- **{sid}**: {s.get('title', '')}. {s.get('what', '')}. torch {rows[0].torch or '?'}. "
                   f"{s.get('code', '')}. <{s['url']}>")
        for r in rows:
            out.append(f"  - {r.id}: <{r.url}> \"{r.quote}\"")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="only these reading ids (comma-separated)")
    ap.add_argument("--md", type=Path, help=f"default {MD.relative_to(ROOT)} (with --rows: not written)")
    ap.add_argument("--csv", type=Path, help=f"default {ESTIMATES.relative_to(ROOT)} (with --rows: not written)")
    args = ap.parse_args(argv)
    readings = load_readings()
    if args.rows:
        wanted = set(args.rows.split(","))
        unknown = wanted - {r.id for r in readings}
        if unknown:
            print(f"error: no reading {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        readings = [r for r in readings if r.id in wanted]
    load_start = uptime()
    print(f"load at start: {load_start}", flush=True)
    start = time.perf_counter()
    est: dict[str, int] = {}
    done: dict[tuple, int] = {}
    for r in readings:
        if not r.modelled or r.kind == "nvidia-smi-approx":
            continue
        key = estimator_key(r)
        if key not in done:
            done[key], secs = estimate(r)
            print(f"{r.id}: estimate {done[key] / MIB:,.0f} MiB ({secs:.1f} s)", flush=True)
        est[r.id] = done[key]
    wall = time.perf_counter() - start
    load_end = uptime()
    lines = table(readings, est)
    print("\n".join(lines))
    scored = [r for r in readings if r.scored and r.id in est]
    errs = [(est[r.id] - r.reading_bytes) / r.reading_bytes for r in scored]
    unmodelled = [r for r in readings if r.id not in est]
    summary = []
    if errs:
        summary.append(f"{len(errs)} nvidia-smi readings: error {min(errs):+.1%} to {max(errs):+.1%}, "
                       f"mean {sum(errs) / len(errs):+.1%}; {sum(e < 0 for e in errs)} under-predicted")
    print("\n".join(summary))
    print(f"{len(done)} estimates in {wall:.0f} s; load at the end: {load_end}")

    if args.rows and args.csv is None and args.md is None:
        return 0  # a subset: the committed table and estimates stay as they are
    args.csv, args.md = args.csv or ESTIMATES, args.md or MD
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", encoding="utf-8") as f:
        f.write("# written by experiments/bench_public.py: the dry-run estimate (vramfit estimate's device total) "
                "of each reading of public_readings.toml\n")
        f.write(",".join(ESTIMATE_COLUMNS) + "\n")
        for r in readings:
            if r.id in est:
                f.write(f"{r.id},{est[r.id]},{r.reading_bytes or ''},{r.batch_size},{min(r.grad_accum, 2)}\n")
    margin = planning_margin(estimates=args.csv) if scored else None
    import torch

    md = ["# The dry-run estimator against public GPU readings", "",
          "`python experiments/bench_public.py`: `vramfit estimate`'s whole-device figure (peak reserved of the "
          "replayed allocator + the CUDA context table) for each public reading of vramfit/data/public_readings.toml. "
          "error = (estimate - reading) / reading; needs margin = (reading - estimate) / estimate, what a plan must "
          "add to the estimate for the reading to fit.", "",
          f"Estimator: vramfit on torch {torch.__version__} (CPU, fake tensors), CUDA target at each GPU's capability. "
          f"{len(done)} estimates in {wall:.0f} s. Load at start: `{load_start}`; at the end: `{load_end}`.", "",
          *lines, "", *summary, ""]
    if margin is not None:
        md += [f"No-profile planning {margin.describe()} (`vramfit.validation.planning_margin`).", ""]
    if unmodelled:
        md += ["## Not scored", ""] + [
            f"- {r.id} ({r.gpu}, {r.kind}: {r.value or r.value_mib}): "
            + (r.unmodelled or ("approximate reading" if r.kind == "nvidia-smi-approx" else "config incomplete"))
            for r in unmodelled] + [""]
    md += ["## Sources", "", *sources(readings), ""]
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {args.md} and {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
