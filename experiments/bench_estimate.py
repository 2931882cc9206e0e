"""Speed of the dry-run estimator, and its accuracy against real tracked CPU steps; prints markdown tables.

    python experiments/bench_estimate.py [--reps 3] [--configs gpt2-small,gpt2-xl] [--no-accuracy]
    python experiments/bench_estimate.py --commands [--reps 2] [--configs gpt2-small]

Speed: seconds per `estimate_step` (two fake `Trainer.step` calls, CUDA target sm80, bf16, fused AdamW, flash;
compile resolves on for this target, so eager and then the torch.compile emulation, graphs traced on first use),
the first call in this process (imports, fake-kernel caches cold, graphs traced) and the median of `--reps` more;
the median of the compiled (headline) estimate alone, what the planners run; the headline estimate of batch + 4
(the graphs, traced with a symbolic batch, are reused); one estimate by `Estimator("child")` (a fresh child
process, what `vramfit estimate` runs) for the first config.
Fresh processes (`--commands`): `vramfit estimate` of the first config as a user runs it, each in a new process with
an empty cache directory at first: cold (no warm estimator process: it starts one), the same shape at batch + 4 (the
warm process has torch, the fake-tensor caches and the traced graphs), then the first request again (the one cache
holds it); wall seconds, with the load average.
Accuracy: the estimate for target 'cpu' against two real `Trainer.step` calls on this CPU under
`vramfit.measure.probe.StorageTracker` (64 B rounding), for the test suite's configs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpt.config import GPTConfig  # noqa: E402
from vramfit.dryrun.estimate import EstimateRequest, estimate_step  # noqa: E402
from vramfit.dryrun.estimator import Estimator  # noqa: E402
from vramfit.recipe import Recipe  # noqa: E402
from vramfit.units import format_size  # noqa: E402

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)
    "gpt2-small": (12, 12, 768, 1024, 12, 50304),  # 124M
    "gpt2-medium": (24, 16, 1024, 1024, 12, 50304),  # 350M
    "gpt2-large": (36, 20, 1280, 1024, 12, 50304),  # 774M
    "gpt2-xl": (48, 25, 1600, 1024, 12, 50304),  # 1.5B
}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _row(name: str, reps: int, isolated: bool) -> str:
    recipe = Recipe(dtype="bfloat16", optimizer="fused")
    L, H, C, T, B, V = CONFIGS[name]
    mc = GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V)

    def run(batch: int = B, **kw: object) -> object:
        return estimate_step(EstimateRequest(mc, batch, recipe, target="cuda", **kw))

    est, first = _timed(run)
    both = statistics.median(_timed(run)[1] for _ in range(reps))
    head = statistics.median(_timed(lambda: run(headline_only=True))[1] for _ in range(reps))
    other = _timed(lambda: run(B + 4, headline_only=True))[1]
    child = lambda: Estimator("child").estimate([EstimateRequest(mc, B, recipe, target="cuda")])  # noqa: E731
    iso = f"{_timed(child)[1]:.2f}" if isolated else ""
    return (f"| {name} | {mc.n_params() / 1e6:.0f}M | {B} x {T} | {format_size(est.peak_bytes)} | "
            f"{est.peak_phase} | {first:.2f} | {both:.2f} | {head:.2f} | {other:.2f} | {iso} |")


def speed(names: list[str], reps: int) -> None:
    print("| config | params | batch x block | peak (sm80, bf16, flash) | phase | first call s | median s | "
          "headline median s | batch+4 headline s | isolated s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        print(_row(name, reps, i == 0), flush=True)


def commands(name: str, reps: int, root: Path) -> None:
    """`vramfit estimate` of the checkout `root` in fresh processes: cold, warm server, cached (module docstring)."""
    import subprocess
    import tempfile

    from vramfit.dryrun.warm import stop_all

    L, H, C, T, B, V = CONFIGS[name]
    shape = ["--n-layer", L, "--n-head", H, "--n-embd", C, "--block-size", T, "--vocab", V, "--recipe",
             "dtype=bfloat16,optimizer=fused"]
    print(f"`vramfit estimate` of {root}, {name}, bf16 fused AdamW, sm80 (compiles: eager and compiled steps)\n")
    print("| fresh process each | wall s | load avg |")
    print("|---|---|---|")
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "VRAMFIT_CACHE_DIR": tmp, "PYTHONPATH": str(root)}
            try:
                for label, batch in (("cold: starts the warm estimator process", B),
                                     (f"warm process, new request (batch {B + 4})", B + 4),
                                     (f"cached request (batch {B})", B)):
                    cmd = [sys.executable, "-m", "vramfit.cli", "estimate", *map(str, shape), "--batch-size",
                           str(batch)]
                    r, wall = _timed(lambda: subprocess.run(cmd, env=env, cwd=root, capture_output=True,  # noqa: B023
                                                            text=True))
                    if r.returncode != 0:
                        raise SystemExit(f"estimate failed: {r.stderr[-500:]}")
                    print(f"| {label} | {wall:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)
            finally:
                stop_all(tmp)


def accuracy() -> None:
    from test_estimate import CASES, real_tracked_peak

    print("| config (L,H,C,T,V) | batch | recipe | estimate B | real tracked B | error | peak phase |")
    print("|---|---|---|---|---|---|---|")
    for shape, batch, recipe_d, _ in CASES:
        mc, recipe = GPTConfig(**shape), Recipe(**recipe_d)
        est = estimate_step(EstimateRequest(mc, batch, recipe, target="cpu"))
        real = real_tracked_peak(mc, batch, recipe)
        s = f"{mc.n_layer},{mc.n_head},{mc.n_embd},{mc.block_size},{mc.vocab_size}"
        r = f"{recipe.dtype} {recipe.optimizer} {recipe.attn_kernel}"
        print(f"| {s} | {batch} | {r} | {est.peak_bytes:,} | {real:,} | {(est.peak_bytes - real) / real:+.3%} | "
              f"{est.peak_phase} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--commands", action="store_true", help="only `vramfit estimate` in fresh processes")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout whose `vramfit estimate` --commands runs (default: this one)")
    args = ap.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at start\n")
    if args.commands:
        commands(names[0], args.reps, args.root)
        return
    speed(names, args.reps)
    if not args.no_accuracy:
        print()
        accuracy()


if __name__ == "__main__":
    main()
