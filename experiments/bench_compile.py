"""The dry run's torch.compile emulation against real compiled CPU steps (Inductor's C++ backend, gcc).

    python experiments/bench_compile.py [--shapes all|nanochat|0,2] [--out results/bench/compile-cpu.csv]

For each shape: the estimate for target 'cpu' with compile=true (`vramfit.dryrun.estimate.estimate_step`: eager
and compiled peaks), then, in a fresh child process, two real `Trainer.step` calls of a `torch.compile`d model.

How the real compiled step is measured: Inductor's generated code allocates its buffers with
`empty_strided_cpu`, which bypasses the dispatcher, so a TorchDispatchMode storage tracker (what the eager
validation uses) cannot see them. Every CPU tensor allocation, however, goes through c10's CPU allocator, which
reports each allocation and free to the profiler when `torch.profiler.profile(profile_memory=True)` is on: the
running sum of those `[memory]` events, from before the Trainer is built to after its second step, is the live
tensor bytes, whoever allocated them, exactly (no RSS noise from the heap or from thread stacks). The compile
itself happens first, on a throw-away Trainer of the same shapes outside the profiler (torch.compile caches the
graphs, so the profiled Trainer does not recompile: the child checks Dynamo's counter). The same profiler
measurement of the eager step is reported as a check of the method (it must equal the eager tracked peak, up to
the tracker's 64-byte rounding).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramfit.measure.provenance import git_commit  # noqa: E402

# (n_layer, n_head, n_embd, block_size, vocab_size, batch, dtype[, dropout]); a shape right after the same shape at
# another batch size reuses the estimate's graphs (traced with a symbolic batch: `vramfit.dryrun.compiled`)
SHAPES = [
    (2, 2, 64, 64, 512, 4, "float32"),
    (2, 4, 128, 128, 4096, 4, "float32"),
    (2, 4, 128, 128, 4096, 4, "bfloat16"),
    (2, 4, 128, 128, 4096, 8, "bfloat16"),
    (4, 4, 128, 256, 1024, 2, "float32"),
    (1, 2, 64, 128, 8192, 4, "bfloat16"),
    (3, 4, 192, 128, 2048, 2, "bfloat16"),
    (2, 4, 128, 128, 1024, 4, "float32", 0.1),
]
# nanochat's block with Muon (`--shapes nanochat`): GQA, a short window and value embeddings, fp32 and bf16
NANOCHAT = {"arch": "nanochat", "n_kv_head": 2, "window_pattern": "SL"}
SHAPES += [
    (2, 4, 128, 256, 2048, 4, "float32", 0.0, NANOCHAT),
    (2, 4, 128, 256, 2048, 4, "bfloat16", 0.0, NANOCHAT),
    (4, 4, 128, 256, 1024, 2, "bfloat16", 0.0, {**NANOCHAT, "window_pattern": "SSSL"}),
]


def unpack(shape: list | tuple) -> tuple:
    """(L, H, C, T, V, B, dtype, dropout) of a SHAPES entry."""
    L, H, C, T, V, B, dtype, *rest = shape
    return L, H, C, T, V, B, dtype, float(rest[0]) if rest else 0.0


def model_of(shape: list | tuple):  # noqa: ANN201 - a GPTConfig
    """The GPTConfig of a SHAPES entry (its options: the nanochat family's) and the optimizer it trains with."""
    from gpt.config import GPTConfig

    L, H, C, T, V, _, _, drop = unpack(shape)
    options = shape[8] if len(shape) > 8 else {}
    mc = GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, dropout=drop, **options)
    return mc, "muon" if mc.arch == "nanochat" else "fused"


def child(req: dict) -> dict:
    """Two real steps of a fresh Trainer (compiled or eager) under the profiler; the peak of live tensor bytes."""
    import torch

    from gpt.data import synthetic_batch
    from gpt.train import Trainer
    from vramfit.dryrun.fake_step import train_config
    from vramfit.measure.probe import allocator_peak

    L, H, C, T, V, B, dtype, drop = unpack(req["shape"])
    mc, optimizer = model_of(req["shape"])
    cfg = train_config(mc, B, dtype, optimizer, "default", grad_clip=1.0, accum=1)
    cfg.compile = req["compile"]
    gen = torch.Generator().manual_seed(0)

    def batch() -> tuple:
        return synthetic_batch(B, T, V, gen, "cpu")

    t = time.perf_counter()
    if cfg.compile:  # compile (forward and backward) on a throw-away trainer
        warm = Trainer(cfg, mc, device="cpu")
        warm.step(batch)
        del warm
        gc.collect()
    compile_s = time.perf_counter() - t
    frames = _dynamo_frames()
    box = []

    def run() -> None:
        trainer = Trainer(cfg, mc, device="cpu")
        for _ in range(2):
            trainer.step(batch)
        box.append(trainer)

    peak = allocator_peak(run)
    return {"peak": peak, "recompiled": _dynamo_frames() != frames, "compile_s": round(compile_s, 1)}


def _dynamo_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values())


def measure(shape: tuple, compile: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps({"shape": shape,
                         "compile": compile}), capture_output=True, text=True, env=env, timeout=1800, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child failed for {shape}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default="all")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "compile-cpu.csv"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(sys.stdin.read()))))
        return
    import torch

    from vramfit.dryrun import compiled
    from vramfit.dryrun.estimate import EstimateRequest, estimate_step
    from vramfit.recipe import Recipe

    picks = (range(len(SHAPES)) if args.shapes == "all" else
             [i for i, s in enumerate(SHAPES) if len(s) > 8] if args.shapes == "nanochat" else
             [int(i) for i in args.shapes.split(",")])
    load = os.getloadavg()[0]
    rows = []
    print("| L,H,C,T,V | batch | dtype | dropout | graphs | eager est | compiled est | real compiled | error | "
          "eager real (prof) | eager est err | est s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i in picks:
        shape = SHAPES[i]
        L, H, C, T, V, B, dtype, drop = unpack(shape)
        mc, optimizer = model_of(shape)
        cached = len(compiled._CACHE)
        t = time.perf_counter()
        est = estimate_step(EstimateRequest(mc, B, Recipe(dtype=dtype, optimizer=optimizer, compile=True),
                                            target="cpu"))
        est_s = time.perf_counter() - t
        graphs = "reused" if len(compiled._CACHE) == cached else "traced"
        real_c, real_e = measure(shape, True), measure(shape, False)
        eager, comp = est.modes["eager"]["peak_bytes"], est.modes["compiled"]["peak_bytes"]
        err = (comp - real_c["peak"]) / real_c["peak"]
        err_e = (eager - real_e["peak"]) / real_e["peak"]
        row = dict(arch=mc.arch, n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, batch=B, dtype=dtype,
                   dropout=drop,
                   graphs=graphs, eager_estimate=eager, compiled_estimate=comp, real_compiled=real_c["peak"],
                   compiled_error=round(err, 5), real_eager_profiler=real_e["peak"], eager_error=round(err_e, 5),
                   compiled_peak_phase=est.modes["compiled"]["peak_phase"], recompiled=real_c["recompiled"],
                   estimate_s=round(est_s, 2), compile_s=real_c["compile_s"])
        rows.append(row)
        print(f"| {L},{H},{C},{T},{V} | {B} | {dtype} | {drop} | {graphs} | {eager:,} | {comp:,} | "
              f"{real_c['peak']:,} | {err:+.2%} | {real_e['peak']:,} | {err_e:+.3%} | {est_s:.1f} |", flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit(ROOT)
    with path.open("w", newline="") as f:
        f.write(f"# vramfit experiments/bench_compile.py, {dt.datetime.now().isoformat(timespec='seconds')}, "
                f"commit {commit}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
                f"load average {load:.1f} at start; real = peak of the CPU allocator's profiler [memory] events "
                f"over two Trainer.step calls (GPT-2: fused AdamW; nanochat: Muon + AdamW, its steps compiled as "
                f"nanochat compiles them; grad_clip 1.0), compile on a throw-away trainer first\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
