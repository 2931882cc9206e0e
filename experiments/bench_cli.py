"""Wall time of whole `vramfit` commands as a user runs them (a fresh interpreter each time), as a table.

    python experiments/bench_cli.py [--repeat 5]

Target (issue 16): `vramfit --help` and `vramfit suggest` against an existing model under 1 s on 2 cores. The
model is fitted here to synthetic points (the timing depends on the code paths, not the coefficients).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def wall(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vramfit", *args], cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"error: vramfit {' '.join(args)} failed: {r.stderr.strip()[-300:]}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from planner_data import synthetic_points

    from vramfit.plan.workflows import fit_and_save

    with tempfile.TemporaryDirectory() as tmp:
        ((_, model),) = fit_and_save(synthetic_points(), tmp)
        cases = {
            "vramfit --help": ["--help"],
            "vramfit suggest --vram 8G": ["suggest", "--vram", "8G", "--model", str(model), "--suggestions-file",
                                          str(Path(tmp) / "s.json")],
            "vramfit predict (GPT-2 small, batch 12)": ["predict", "--n-layer", "12", "--n-head", "12", "--n-embd",
                                                        "768", "--block-size", "1024", "--batch-size", "12",
                                                        "--model", str(model)],
        }
        print(f"python {sys.version.split()[0]}, {args.repeat} runs each, fresh interpreter per run")
        print("| command | median s | min s | max s |")
        print("|---|---|---|---|")
        for name, cmd in cases.items():
            t = wall(cmd, args.repeat)
            print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")


if __name__ == "__main__":
    main()
