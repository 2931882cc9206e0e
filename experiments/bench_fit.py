"""`vramfit fit` at scale: wall time and peak RSS of the whole command on 10k and 100k synthetic points
(target: 100k in under 10 s). The points come from known coefficients (the physics of tests/planner_data.py) over
random shapes, with ms/iter so the throughput model is fitted too, and are stored through the Store like a sweep's.

    python experiments/bench_fit.py [--sizes 10000 100000] [--dir /dev/shm]

Each fit runs as its own process (`python -m vramfit.cli fit`); wall time, CPU time (user + sys) and the child's
peak RSS (os.wait4) are printed as a table with the load average: on a shared machine wall time measures the
neighbours too, CPU time much less so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from planner_data import SYNTHETIC_GPU, true_memory  # noqa: E402

from vramfit.recipe import Recipe  # noqa: E402
from vramfit.store import Store  # noqa: E402


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` points over random shapes: memory from the known coefficients (+0.2% noise), ms/iter from FLOPs."""
    rng = np.random.default_rng(seed)
    L = rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 24], n)
    C = rng.choice(np.arange(64, 1025, 64), n)
    H = np.maximum(1, C // 64)
    T = rng.choice([64, 128, 256, 512, 1024], n)
    B = rng.choice([1, 2, 4, 8, 16, 32], n)
    V = rng.choice([512, 8192, 50304], n)
    y = true_memory(L, H, C, T, B, V) * (1 + rng.normal(0, 0.002, n))
    flops = 6 * (12 * L * C * C) * B * T + 12 * L * C * T * B * T
    ms = 1.0 + flops / 5e9 * (1 + rng.normal(0, 0.02, n)).clip(0.9, 1.1)
    cap = SYNTHETIC_GPU["total_memory_bytes"]
    return [dict(n_layer=int(L[i]), n_head=int(H[i]), n_embd=int(C[i]), block_size=int(T[i]), batch_size=int(B[i]),
                 vocab_size=int(V[i]), status="ok" if y[i] <= cap else "oom",
                 nvml_bytes=float(y[i]) if y[i] <= cap else None,
                 ms_per_iter=float(ms[i]) if y[i] <= cap else None) for i in range(n)]


def build_db(path: Path, n: int) -> float:
    t = time.perf_counter()
    with Store(path) as store:
        env = store.environment(SYNTHETIC_GPU, Recipe(dtype="bfloat16", compile=True, optimizer="fused"))
        for rec in synthetic_rows(n):
            store.insert_point(rec, env, None)
    return time.perf_counter() - t


def run_fit(db: Path, out: Path) -> tuple[int, float, float, float, str]:
    """(exit code, wall s, CPU s, peak RSS MiB, stderr tail) of `vramfit fit` in its own process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "vramfit.cli", "fit", "--db", str(db), "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    cpu = usage.ru_utime + usage.ru_stime
    return os.waitstatus_to_exitcode(status), wall, cpu, usage.ru_maxrss / 1024, err[-500:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = ap.parse_args()
    print(f"`vramfit fit` on synthetic points; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| points | ok points | build db s | fit wall s | fit CPU s | fit peak RSS MiB | exit | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.sizes:
            db = Path(tmp) / f"fit-{n}.sqlite"
            build = build_db(db, n)
            n_ok = sum(r["status"] == "ok" for r in synthetic_rows(n))
            rc, wall, cpu, rss, err = run_fit(db, Path(tmp) / "models")
            print(f"| {n:,} | {n_ok:,} | {build:.1f} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {rc} | "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)
            if rc:
                print(err, file=sys.stderr)


if __name__ == "__main__":
    main()
