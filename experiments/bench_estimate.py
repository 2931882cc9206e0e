"""Speed of the dry-run estimator, and its accuracy against real tracked CPU steps; prints markdown tables.

    python experiments/bench_estimate.py [--reps 3] [--configs gpt2-small,gpt2-xl] [--no-accuracy]

Speed: seconds per `estimate_step` (two fake `Trainer.step` calls, CUDA target sm80, bf16, fused AdamW, flash;
compile resolves on for this target, so eager and then the torch.compile emulation, graphs traced on first use),
the first call in this process (imports, fake-kernel caches cold) and the median of `--reps` more; plus one
`estimate_step_isolated` (fresh child process, what `vramfit estimate` runs) for the first config.
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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpt.config import GPTConfig  # noqa: E402
from vramfit.dryrun.estimate import estimate_step, estimate_step_isolated  # noqa: E402
from vramfit.recipe import Recipe  # noqa: E402
from vramfit.units import format_size  # noqa: E402

CONFIGS = {
    # name: (n_layer, n_head, n_embd, block_size, batch_size, vocab_size)
    "gpt2-small": (12, 12, 768, 1024, 12, 50304),  # 124M
    "gpt2-medium": (24, 16, 1024, 1024, 12, 50304),  # 350M
    "gpt2-large": (36, 20, 1280, 1024, 12, 50304),  # 774M
    "gpt2-xl": (48, 25, 1600, 1024, 12, 50304),  # 1.5B
}


def speed(names: list[str], reps: int) -> None:
    recipe = Recipe(dtype="bfloat16", optimizer="fused")
    print("| config | params | batch x block | peak (sm80, bf16, flash) | phase | first call s | median s | "
          "isolated s |")
    print("|---|---|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        L, H, C, T, B, V = CONFIGS[name]
        mc = GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V)
        t = time.perf_counter()
        est = estimate_step(mc, B, recipe, target="cuda")
        first = time.perf_counter() - t
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            estimate_step(mc, B, recipe, target="cuda")
            times.append(time.perf_counter() - t)
        iso = ""
        if i == 0:
            t = time.perf_counter()
            estimate_step_isolated(mc, B, recipe, target="cuda")
            iso = f"{time.perf_counter() - t:.2f}"
        print(f"| {name} | {mc.n_params() / 1e6:.0f}M | {B} x {T} | {format_size(est.peak_bytes)} | "
              f"{est.peak_phase} | {first:.2f} | {statistics.median(times):.2f} | {iso} |", flush=True)


def accuracy() -> None:
    from test_estimate import CASES, real_tracked_peak

    print("| config (L,H,C,T,V) | batch | recipe | estimate B | real tracked B | error | peak phase |")
    print("|---|---|---|---|---|---|---|")
    for shape, batch, recipe_d, _ in CASES:
        mc, recipe = GPTConfig(**shape), Recipe(**recipe_d)
        est = estimate_step(mc, batch, recipe, target="cpu")
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
    args = ap.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads\n")
    speed(names, args.reps)
    if not args.no_accuracy:
        print()
        accuracy()


if __name__ == "__main__":
    main()
