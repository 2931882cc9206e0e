"""`vramfit estimate --like` against nanoGPT's own, unmodified train.py on the CPU.

    python experiments/bench_nanogpt_loop.py NANOGPT_DIR [--configs all|0,3] [--md FILE] [--text FILE]

For each config (1 and several micro-steps, dropout on and off, bias on and off; char-level shakespeare) a config
file is written to a temporary folder and:
- nanoGPT's `train.py CONFIG` runs in a fresh process in NANOGPT_DIR (device cpu, compile off, 3 iterations and
  the evaluation at iteration 0) under `torch.profiler.profile(profile_memory=True)`: the peak of the running sum
  of the CPU allocator's `[memory]` events (every allocation and free of a CPU tensor, whoever makes it, exact
  bytes) is its peak of live tensor bytes. That reading uses no vramfit code.
- `vramfit estimate --like CONFIG` runs in NANOGPT_DIR (so `dataset` finds data/shakespeare_char/meta.pkl); its
  JSON's `peak_bytes` is the estimate (nanoGPT's loop, the file's micro-steps, clipping and device); the same
  with `--loop vramfit` (vramfit's own step of the config) is shown beside it, for comparison.
The reading and the estimate are printed side by side, the difference in % of the reading; the run fails where
one is off by more than 0.1 %. The corpus is prepared by nanoGPT's own data/shakespeare_char/prepare.py from a
local copy of tiny shakespeare (--text; no network), where NANOGPT_DIR has none. Writes
results/bench/nanogpt-loop-cpu.md (--md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramfit.measure.provenance import git_commit  # noqa: E402

MD = ROOT / "results" / "bench" / "nanogpt-loop-cpu.md"
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TOLERANCE = 0.001
# (batch, block, layers, heads, width, micro-steps, dropout, bias)
CONFIGS = [
    (4, 64, 2, 2, 64, 1, 0.0, False),
    (4, 64, 2, 2, 64, 1, 0.2, False),
    (4, 64, 2, 2, 64, 1, 0.0, True),
    (4, 64, 2, 2, 64, 3, 0.2, True),
    (8, 128, 3, 4, 128, 2, 0.0, False),
    (8, 128, 3, 4, 128, 4, 0.1, True),
]
# the reading: nanoGPT's train.py under the CPU allocator's profiler events; no vramfit import
CHILD = r"""
import runpy, sys
from torch.profiler import ProfilerActivity, profile
sys.argv = ["train.py", sys.argv[1]]
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    runpy.run_path("train.py", run_name="__main__")
events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
live = peak = 0
for _, n in events:
    live += n
    peak = max(peak, live)
print("PEAK", peak)
"""


def config_text(cfg: tuple, out_dir: Path) -> str:
    B, T, L, H, C, accum, dropout, bias = cfg
    return (f"out_dir = {str(out_dir)!r}\ndataset = 'shakespeare_char'\ngradient_accumulation_steps = {accum}\n"
            f"batch_size = {B}\nblock_size = {T}\nn_layer = {L}\nn_head = {H}\nn_embd = {C}\ndropout = {dropout}\n"
            f"bias = {bias}\ndevice = 'cpu'\ncompile = False\ndtype = 'float32'\nmax_iters = 2\neval_iters = 1\n"
            "eval_interval = 1000\nlog_interval = 1\nalways_save_checkpoint = False\n")


def prepare(nanogpt: Path, text: Path) -> None:
    """data/shakespeare_char by nanoGPT's own prepare.py, from a local input.txt (it downloads only without one)."""
    folder = nanogpt / "data" / "shakespeare_char"
    if (folder / "train.bin").is_file() and (folder / "meta.pkl").is_file():
        return
    if not (folder / "input.txt").is_file():
        if not text.is_file():
            sys.exit(f"error: no tiny shakespeare at {text} (pass --text FILE)")
        shutil.copy(text, folder / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, capture_output=True, text=True)


def reading(nanogpt: Path, config: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(config)], cwd=nanogpt, capture_output=True, text=True,
                          timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"error: nanoGPT's train.py failed on {config}:\n{proc.stderr[-2000:]}")
    return int(lines[-1].split()[1])


def estimate(nanogpt: Path, config: Path, *flags: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vramfit.cli", "estimate", "--like", str(config), "--json", *flags],
                          cwd=nanogpt, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"error: vramfit estimate failed on {config}: {proc.stderr.strip()[-1000:]}")
    return json.loads(proc.stdout)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nanogpt", type=Path, help="a nanoGPT checkout (train.py, model.py, data/shakespeare_char)")
    ap.add_argument("--configs", default="all", help="all, or indices into CONFIGS: 0,3")
    ap.add_argument("--md", type=Path, default=MD)
    ap.add_argument("--text", type=Path, default=TEXT, help="tiny shakespeare (input.txt for prepare.py)")
    args = ap.parse_args(argv)
    nanogpt = args.nanogpt.resolve()
    if not (nanogpt / "train.py").is_file():
        print(f"error: {nanogpt} is not a nanoGPT checkout (no train.py)", file=sys.stderr)
        return 2
    picked = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    prepare(nanogpt, args.text)
    start = load()
    print(f"{start} at start")
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(picked):
            path = Path(tmp) / f"bench_{i}.py"
            path.write_text(config_text(cfg, Path(tmp) / "out"))
            t = time.perf_counter()
            real, est = reading(nanogpt, path), estimate(nanogpt, path)
            ours = estimate(nanogpt, path, "--loop", "vramfit")["peak_bytes"]
            diff = (est["peak_bytes"] - real) / real
            bad += abs(diff) > TOLERANCE
            rows.append((cfg, real, est, diff, ours))
            B, T, L, H, C, accum, dropout, bias = cfg
            print(f"B{B} T{T} {L}L {H}H {C}C x{accum} dropout {dropout} bias {bias}: nanoGPT {real:,} B, estimate "
                  f"{est['peak_bytes']:,} B ({diff:+.3%}; peak in {est['peak_phase']}; vramfit's loop "
                  f"{(ours - real) / real:+.2%}) "
                  f"[{time.perf_counter() - t:.0f} s]", flush=True)
    end = load()
    print(f"{end} at the end")
    write_md(args.md, rows, nanogpt, (start, end))
    print(f"wrote {args.md}")
    if bad:
        print(f"error: {bad} config(s) off by more than {TOLERANCE:.1%}", file=sys.stderr)
    return 1 if bad else 0


def write_md(path: Path, rows: list, nanogpt: Path, loads: tuple[str, str]) -> None:
    import torch

    lines = [
        "# `vramfit estimate --like` vs nanoGPT's own train.py (CPU)",
        "",
        f"Written by `python experiments/bench_nanogpt_loop.py NANOGPT_DIR` on {dt.date.today()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"Python {platform.python_version()}; vramfit {git_commit(ROOT)}; nanoGPT {git_commit(nanogpt)}; "
        f"{loads[0]} at start, {loads[1]} at the end).",
        "",
        "nanoGPT: its unmodified `train.py CONFIG` (device cpu, compile off, float32, 3 iterations after the "
        "evaluation at iteration 0) under `torch.profiler.profile(profile_memory=True)`; the peak of the running sum "
        "of the CPU allocator's `[memory]` events is its peak of live tensor bytes (exact bytes, no vramfit code). "
        "Estimate: `vramfit estimate --like CONFIG --json`'s `peak_bytes` (nanoGPT's loop: the logits kept through "
        "backward, the next batch fetched before it, the for-loop AdamW torch picks on the CPU; the file's "
        "micro-steps and clipping). The last column: `--loop vramfit`, vramfit's own step of the same config "
        "(it drops the logits at once, fetches its batch at the start of each micro-step, and runs the fused "
        "AdamW). Char-level shakespeare (vocabulary 65) prepared by nanoGPT's prepare.py.",
        "",
        "| batch | block | layers | heads | width | micro-steps | dropout | bias | nanoGPT peak (B) | estimate (B) "
        "| estimate - nanoGPT | peak in | `--loop vramfit` - nanoGPT |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- | ---: | ---: | ---: | :--- | ---: |",
    ]
    for (B, T, L, H, C, accum, dropout, bias), real, est, diff, ours in rows:
        lines.append(f"| {B} | {T} | {L} | {H} | {C} | {accum} | {dropout} | {bias} | {real:,} | "
                     f"{est['peak_bytes']:,} | {diff:+.3%} | {est['peak_phase']} | {(ours - real) / real:+.2%} |")
    worst = max(abs(r[3]) for r in rows)
    lines += ["", f"Worst difference: {worst:.3%} (tolerance {TOLERANCE:.1%}).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
