"""Measure ONE point in this (fresh) process and print one JSON record as the last line of stdout.

    python -m vramfit.measure.worker '<spec json>'      (or the spec on stdin)

The spec: {"point": {n_layer, n_head, n_embd, block_size, batch_size, vocab_size}, "recipe": {resolved Recipe},
"device": "cpu" | "cuda", "gpu_uuid", "measure": {Measure}, "emulate_bytes", "idle_baseline", "spawn_time"}.
The record: the six shape keys, status (ok | oom | error), readings in bytes (CPU: tracked_bytes, rss_bytes;
CUDA: nvml_bytes, allocated_bytes, reserved_bytes, context_bytes, alloc_retries, num_ooms), ms_per_iter,
tokens_per_s, iters, stable, error, timings (seconds: process_start, import, warmup (CPU: kernels and lazy
imports, off the record), build (model + optimizer; CUDA: context too), first_iter (compile on CUDA),
iters (the rest), total).
The parent sets CUDA_VISIBLE_DEVICES to the GPU's UUID, so the worker always trains on cuda:0.
"""

from __future__ import annotations

import time

T_START = time.time()

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from vramfit import SHAPE_KEYS  # noqa: E402  (a constant: no heavy import before the timer)


def is_stable(history: list[list[int]], window: int, tolerance: float) -> bool:
    """True when each reading's last `window` values differ by at most `tolerance` (relative to the largest)."""
    if len(history) < window:
        return False
    for series in zip(*history[-window:], strict=True):
        hi, lo = max(series), min(series)
        if hi > 0 and (hi - lo) / hi > tolerance:
            return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in text
            or "not enough memory" in text)


def run_point(spec: dict) -> dict:
    """Build the GPT with the real Trainer, train on synthetic tokens until memory is stable; one record."""
    import torch
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use anyway; count it as import time

    from gpt.config import make_config
    from gpt.data import synthetic_batch
    from gpt.train import Trainer
    from vramfit.measure import probe
    from vramfit.recipe import Recipe

    t_import = time.time()
    point = {k: int(spec["point"][k]) for k in SHAPE_KEYS}
    m = spec.get("measure", {})
    min_iters, max_iters = max(3, int(m.get("min_iters", 4))), int(m.get("max_iters", 30))
    window, tol = int(m.get("window", 3)), float(m.get("tolerance", 0.01))
    timing_iters = int(m.get("timing_iters", 0))
    device = spec.get("device", "cpu")
    cuda = device.startswith("cuda")
    emulate = spec.get("emulate_bytes")
    recipe = Recipe.from_dict(spec.get("recipe", {}))
    rec: dict = {**point, "status": "error", "device": device, "pid": os.getpid(), "iters": 0, "stable": False,
                 "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    timings = {"process_start": max(0.0, T_START - spec["spawn_time"]) if spec.get("spawn_time") else None,
               "import": t_import - T_START}
    rec["timings"] = timings
    threads = int(m.get("threads", 1))
    if not cuda and threads > 0:
        torch.set_num_threads(threads)

    cfg = recipe.apply(make_config({**point, "device": "cuda" if cuda else "cpu"}))
    model_config = cfg.model_config()
    rec["n_params"] = model_config.n_params()
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = "cuda:0" if cuda else "cpu"
    B, T, V = point["batch_size"], point["block_size"], point["vocab_size"]

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return synthetic_batch(B, T, V, gen, dev)

    nv = None
    baseline = spec.get("idle_baseline")
    tracker = None
    t0 = time.time()
    if cuda:
        torch.cuda.set_device(0)
        timings["warmup"] = 0.0
        nv = probe.NvmlProbe(spec.get("gpu_uuid"))
        if not nv.ok:
            rec["nvml_note"] = f"NVML unavailable ({nv.error}); torch counters only"
        torch.empty(1, device=dev)  # the CUDA context
        torch.cuda.synchronize()
        ctx, _ = nv.reading(baseline)
        rec["context_bytes"] = ctx
        if emulate:
            total = torch.cuda.get_device_properties(0).total_memory
            allowed = int(emulate) - (ctx if ctx is not None else 512 * 2**20)
            if allowed <= 0:
                rec.update(status="oom", error=f"emulated card ({emulate} B) is smaller than the CUDA context")
                return rec
            torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), 0)
        torch.cuda.reset_peak_memory_stats(0)
    else:  # warm up kernels and libraries on a 1-layer, batch-1 copy so RSS counts the step, not the code
        warm = Trainer(cfg, type(model_config)(**{**model_config.to_dict(), "n_layer": 1}), dev)
        for _ in range(2):
            warm.step(lambda: synthetic_batch(1, T, V, gen, dev))
        del warm
        gc.collect()
        timings["warmup"] = time.time() - t0
        t0 = time.time()
        probe.reset_peak_rss()
        rss0 = probe.rss_bytes()
        tracker = probe.StorageTracker(cap_bytes=int(emulate) if emulate else None)

    def read() -> list[int]:
        if cuda:
            torch.cuda.synchronize()
            c = probe.cuda_counters(0)
            rec.update(c)
            if nv is not None and nv.ok:
                used, src = nv.reading(baseline)
                if used is not None:
                    rec["nvml_bytes"] = max(rec.get("nvml_bytes") or 0, used)
                    rec["nvml_source"] = src
            return [c["reserved_bytes"], rec.get("nvml_bytes") or 0]
        rec["tracked_bytes"] = tracker.peak
        rec["rss_bytes"] = max(0, probe.peak_rss_bytes() - rss0)
        return [rec["tracked_bytes"], rec["rss_bytes"]]

    step_times: list[float] = []
    history: list[list[int]] = []
    failure: BaseException | None = None
    trainer = None
    t_build = t_first = None
    try:
        if tracker is not None:
            tracker.__enter__()
        try:
            trainer = Trainer(cfg, model_config, dev)
            if cuda:
                torch.cuda.synchronize()
            t_build = time.time()
            rec["dtype"] = trainer.dtype
            for it in range(1, max_iters + 1):
                s = time.perf_counter()
                trainer.step(batch)
                if cuda:
                    torch.cuda.synchronize()
                step_times.append(time.perf_counter() - s)
                reading = read()
                if it == 1:
                    t_first = time.time()
                rec["iters"] = it
                if it >= 2:  # the first step has no Adam state yet
                    history.append(reading)
                if it >= min_iters and is_stable(history, window, tol):
                    rec["stable"] = True
                    break
        finally:
            if tracker is not None:
                tracker.__exit__(None, None, None)
        if timing_iters:  # time the plain step: the CPU tracker's per-op bookkeeping would slow it down
            if not cuda:
                rec["malloc_for_speed"] = probe.malloc_for_speed()
                trainer.step(batch)  # one untimed step to populate the heap under the new thresholds
            step_times = []
            for _ in range(timing_iters):
                s = time.perf_counter()
                trainer.step(batch)
                if cuda:
                    torch.cuda.synchronize()
                step_times.append(time.perf_counter() - s)
            rec["timed_iters"] = timing_iters
    except Exception as exc:  # noqa: BLE001 - classified below, outside the except block
        failure = exc
        rec["error"] = _first_line(exc)
        rec["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    if failure is not None:
        oom = _is_oom(failure)
        del failure
        trainer = None
        gc.collect()
        rec["status"] = "oom" if oom else "error"
        try:
            read()
        except Exception:  # noqa: BLE001 - best effort after a failure
            pass
    else:
        rec["status"] = "ok"
        steady = step_times if timing_iters else (step_times[2:] or step_times[1:] or step_times)
        timings["step_ms"] = [round(t * 1000, 3) for t in steady]
        rec["ms_per_iter"] = statistics.median(steady) * 1000
        rec["tokens_per_s"] = B * T / statistics.median(steady)
    if tracker is not None:
        rec["num_ooms"] = tracker.n_ooms
    now = time.time()
    timings["build"] = (t_build or now) - t0
    timings["first_iter"] = (t_first - t_build) if t_first and t_build else None
    timings["iters"] = (now - t_first) if t_first else None
    timings["total"] = now - T_START
    del trainer
    return rec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        spec = json.loads(argv[0] if argv else sys.stdin.read())
        rec = run_point(spec)
    except Exception as exc:  # noqa: BLE001 - the record says what went wrong
        traceback.print_exc(file=sys.stderr)
        rec = {"status": "error", "error": _first_line(exc)}
        try:
            rec.update({k: int(spec["point"][k]) for k in SHAPE_KEYS})
        except Exception:  # noqa: BLE001
            pass
    tb = rec.pop("traceback", None)
    if tb:
        sys.stderr.write(tb)
    sys.stdout.write("\n" + json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # the record is out: skip the ~0.7 s interpreter teardown that torch's modules cost
