"""Measure ONE point in this (fresh) process and print one JSON record as the last line of stdout.

    python -m vramfit.measure.worker '<spec json>'      (or the spec on stdin)

The spec: {"point": {n_layer, n_head, n_embd, block_size, batch_size, vocab_size[, arch]}, "recipe": {resolved Recipe},
"device": "cpu" | "cuda", "gpu_uuid", "measure": {Measure}, "emulate_bytes", "idle_baseline", "pids_before",
"spawn_time"}.
The record: the six shape keys (and the family, `arch`, where it is not GPT-2), status (ok | oom | error), readings in
bytes (CPU: tracked_bytes, rss_bytes; CUDA: nvml_bytes (the peak, see `vramfit.measure.reader`), nvml_raw_bytes,
nvml_source, allocated_bytes, reserved_bytes, context_bytes, alloc_retries, num_ooms, foreign_procs, peak_steps),
ms_per_iter, tokens_per_s, iters, stable, error, dtype, compile (compiled points: compile_cache hit | miss | mixed |
off, compile_s, fxgraph_cache_hits / misses, autograd_cache_hits, dynamic_batch (asked: measure.dynamic_batch),
batch_symbolic (what Dynamo compiled), dynamo_graphs, and on the CPU alloc_step_peak_bytes), worker (spawn | fork: a
child of the fork server, `vramfit.measure.zygote`), timings (seconds: process_start, import, warmup (CPU: kernels and
lazy imports, off the record), build (model + optimizer; CUDA: context too), first_iter (compile on CUDA), iters (the
rest), total).
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

from vramfit.child import die_with_parent  # noqa: E402  (no torch either)
from vramfit.shape import KEYS, Shape  # noqa: E402  (no torch: no heavy import before the timer)

FORK_INFO: dict = {"forked": False}  # set by the fork server's child (`vramfit.measure.zygote`) before main


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in text
            or "not enough memory" in text)


class Point:
    """One point's settings, parsed from the spec, and its record as it fills up."""

    def __init__(self, spec: dict, t_import: float) -> None:
        from gpt.config import make_config
        from vramfit.recipe import Recipe, alloc_conf_in_force
        from vramfit.shape import arch_options

        self.spec = spec
        self.shape = {k: int(spec["point"][k]) for k in KEYS}
        family = Shape.of(spec["point"]).point()  # the sizes, and the family where it is not GPT-2's
        m = spec.get("measure", {})
        self.min_iters, self.max_iters = max(3, int(m.get("min_iters", 4))), int(m.get("max_iters", 30))
        self.window, self.tolerance = int(m.get("window", 3)), float(m.get("tolerance", 0.01))
        self.timing_iters, self.threads = int(m.get("timing_iters", 0)), int(m.get("threads", 1))
        self.cuda = spec.get("device", "cpu").startswith("cuda")
        self.dev = "cuda:0" if self.cuda else "cpu"
        self.emulate = spec.get("emulate_bytes")
        self.dynamo_before: tuple[int, int] | None = None  # Dynamo's state before the measured trainer
        recipe = Recipe.from_dict(spec.get("recipe", {}))
        options = arch_options(family["arch"]) if "arch" in family else {}
        self.cfg = recipe.apply(make_config({**self.shape, **options, "device": "cuda" if self.cuda else "cpu",
                                             "dynamic_batch": bool(m.get("dynamic_batch"))}))
        self.model_config = self.cfg.model_config()
        self.timings = {"process_start": max(0.0, T_START - spec["spawn_time"]) if spec.get("spawn_time") else None,
                        "import": t_import - T_START}
        self.rec: dict = {**family, "status": "error", "device": spec.get("device", "cpu"), "pid": os.getpid(),
                          "iters": 0, "stable": False, "alloc_conf": alloc_conf_in_force(os.environ),
                          "timings": self.timings, "n_params": self.model_config.n_params(),
                          "worker": "fork" if FORK_INFO.get("forked") else "spawn"}
        if FORK_INFO.get("forked"):
            self.rec["fork_mallopt"] = FORK_INFO.get("malloc_env")

    def settle_dynamic_batch(self) -> None:
        """Unmark the batch if this device does not compile the recipe (the sweep decides dynamic_batch once for
        all its devices; compile 'auto' is off on the CPU and below CUDA capability 7.0): nothing to mark there."""
        from dataclasses import replace

        from gpt.train import resolve_for_device

        if self.cfg.dynamic_batch and not resolve_for_device(self.cfg, self.dev)[1]:
            self.cfg = replace(self.cfg, dynamic_batch=False)

    def batch_fn(self, gen, batch_size: int | None = None):
        from gpt.data import synthetic_batch

        B, T, V = batch_size or self.shape["batch_size"], self.shape["block_size"], self.shape["vocab_size"]
        return lambda: synthetic_batch(B, T, V, gen, self.dev)


def _cuda_reader(pt: Point):
    """The CUDA context on cuda:0 (the parent made the GPU the only visible one) and its reader, started."""
    import torch

    from vramfit.measure.probe import NvmlProbe
    from vramfit.measure.reader import CudaReader, MemoryReader

    torch.cuda.set_device(0)
    pt.timings["warmup"] = 0.0
    spec = pt.spec
    nv = NvmlProbe(spec.get("gpu_uuid"))
    reader = CudaReader(nv, 0, spec.get("idle_baseline"), spec.get("pids_before"), pt.emulate)
    torch.empty(1, device=pt.dev)  # the CUDA context (the reader reads it when the measurement starts)
    return MemoryReader(reader, pt.window, pt.tolerance, pt.min_iters)


def _cpu_reader(pt: Point, gen):
    """Warm kernels and libraries up on a 1-layer, batch-1 copy (so that RSS counts the step, not the code), then
    the CPU reader (tracker + RSS)."""
    import torch

    from gpt.train import Trainer
    from vramfit.measure.reader import CpuReader, MemoryReader

    if pt.threads > 0:
        torch.set_num_threads(pt.threads)
    t0 = time.time()
    pt.settle_dynamic_batch()
    warm = Trainer(pt.cfg, type(pt.model_config)(**{**pt.model_config.to_dict(), "n_layer": 1}), pt.dev)
    for _ in range(2):
        warm.step(pt.batch_fn(gen, 1))
    del warm
    gc.collect()
    if pt.cfg.compile:
        # the measured trainer compiles as in a fresh process (as on CUDA, where nothing is compiled before it):
        # otherwise Dynamo's automatic dynamic shapes would make its batch dimension symbolic after the batch-1
        # warm-up, whatever the point asked for (seen with torch 2.13)
        torch._dynamo.reset()
    pt.timings["warmup"] = time.time() - t0
    return MemoryReader(CpuReader(pt.emulate, compiled=bool(pt.cfg.compile)), pt.window, pt.tolerance, pt.min_iters)


def _measure(pt: Point, reader, gen, sync) -> tuple[object, list[float], float | None, float | None]:
    """Build the real Trainer and step until the reader says the memory is stable (or max_iters); returns
    (trainer, step seconds, build done, first step done)."""
    from gpt.train import Trainer

    batch = pt.batch_fn(gen)
    step_times: list[float] = []
    t_build = t_first = None
    pt.dynamo_before = dynamo_mark()
    reader.start()
    try:
        pt.settle_dynamic_batch()
        trainer = Trainer(pt.cfg, pt.model_config, pt.dev)
        sync()
        t_build = time.time()
        pt.rec.update(dtype=trainer.dtype, compile=trainer.compile)
        for it in range(1, pt.max_iters + 1):
            s = time.perf_counter()
            trainer.step(batch)
            sync()
            step_times.append(time.perf_counter() - s)
            stable = reader.after_step(it)
            t_first = t_first or time.time()
            pt.rec["iters"] = it
            if stable:
                break
    finally:
        reader.stop()
        pt.rec.update(reader.record)
    return trainer, step_times, t_build, t_first


def _time_steps(pt: Point, trainer, gen, sync) -> list[float]:
    """Time `timing_iters` plain steps after the memory is measured (the CPU tracker's bookkeeping is off)."""
    from vramfit.measure import probe

    batch = pt.batch_fn(gen)
    if not pt.cuda:
        pt.rec["malloc_for_speed"] = probe.malloc_for_speed()
        trainer.step(batch)  # one untimed step to populate the heap under the new thresholds
    times, cpu = [], []
    for _ in range(pt.timing_iters):
        s, c = time.perf_counter(), time.process_time()
        trainer.step(batch)
        sync()
        times.append(time.perf_counter() - s)
        cpu.append(time.process_time() - c)
    pt.rec["timed_iters"] = pt.timing_iters
    if not pt.cuda:  # the CPU time each step used: its own cost, which neighbours on a shared CPU barely change
        pt.timings["step_cpu_ms"] = [round(t * 1000, 3) for t in cpu]
    return times


def run_point(spec: dict) -> dict:
    """Build the GPT with the real Trainer, train on synthetic tokens until memory is stable; one record."""
    import torch
    import torch._dynamo  # noqa: F401 - torch.optim imports it on first use anyway; count it as import time

    pt = Point(spec, time.time())
    gen = torch.Generator().manual_seed(pt.cfg.seed)
    sync = torch.cuda.synchronize if pt.cuda else (lambda: None)
    t0 = time.time()
    failed: str | None = None  # 'oom' | 'error' (no reference to the exception: its frames hold the trainer)
    reader = trainer = None
    t_build = t_first = None
    step_times: list[float] = []
    try:
        reader = _cuda_reader(pt) if pt.cuda else _cpu_reader(pt, gen)
        t0 = t0 if pt.cuda else time.time()
        trainer, step_times, t_build, t_first = _measure(pt, reader, gen, sync)
        if pt.timing_iters:
            step_times = _time_steps(pt, trainer, gen, sync)
    except Exception as exc:  # noqa: BLE001 - classified here; the record says what went wrong
        failed = "oom" if _is_oom(exc) else "error"
        pt.rec["error"] = _first_line(exc)
        pt.rec["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    _finish(pt, failed, reader, step_times)
    if pt.rec.get("status") == "ok" and not pt.cuda and pt.rec.get("compile"):
        try:
            _compiled_cpu_reading(pt, trainer, gen)
        except Exception as exc:  # noqa: BLE001 - the point's reading is incomplete: say so
            pt.rec.update(status="error", error=f"compiled CPU reading: {_first_line(exc)}")
        else:
            from vramfit.measure.reader import over_emulated_card

            over = over_emulated_card(pt.rec["tracked_bytes"], pt.emulate)
            if over:
                pt.rec.update(status="oom", error=over)
    if pt.rec.get("compile"):
        pt.rec.update(compile_record(), dynamic_batch=pt.cfg.dynamic_batch, **batch_record(pt.dynamo_before))
    now = time.time()
    pt.timings.update(build=(t_build or now) - t0, first_iter=(t_first - t_build) if t_first and t_build else None,
                      iters=(now - t_first) if t_first else None, total=now - T_START)
    del trainer
    return pt.rec


def _compiled_cpu_reading(pt: Point, trainer, gen) -> None:
    """A compiled CPU point's `tracked_bytes` (`reader.add_compiled_step`), from one more step after the readings
    and the timing; the same method as `experiments/bench_compile.py`."""
    from vramfit.measure.probe import allocator_peak, training_state_bytes
    from vramfit.measure.reader import add_compiled_step

    live = training_state_bytes(trainer.model, trainer.optimizer)
    add_compiled_step(pt.rec, live, allocator_peak(lambda: trainer.step(pt.batch_fn(gen))))


def dynamo_mark() -> tuple[int, int]:
    """When, and after how many graphs, the measured trainer starts (µs since the epoch, Dynamo's graph count): what
    it compiles is what Dynamo records after that (`batch_record`)."""
    from torch._dynamo import utils

    return time.time_ns() // 1000, int(utils.counters["stats"].get("unique_graphs", 0))


def batch_record(before: tuple[int, int] | None) -> dict:
    """What Dynamo compiled for the measured trainer since `before`: `dynamo_graphs` (graphs compiled; more than
    one means it recompiled) and `batch_symbolic` (whether those graphs' tensors have a symbolic size, i.e. the
    batch dimension was compiled dynamic; None where this torch does not record graph shapes or start times).
    Dynamo's compilation records (a bounded deque) are told apart by their start time, not their identity."""
    import ast

    from torch._dynamo import utils

    since, graphs = before or (0, 0)
    symbolic = None
    for m in list(utils._compilation_metrics):
        shapes = getattr(m, "graph_node_shapes", None)
        if (getattr(m, "start_time_us", None) or 0) < since or not shapes:
            continue
        try:
            sizes = ast.literal_eval(shapes)  # {node: [int | 's0', ...]} as Dynamo's get_graph_sizes_structured
        except (ValueError, SyntaxError):
            continue
        if isinstance(sizes, dict) and sizes:
            symbolic = bool(symbolic) or any(isinstance(d, str) for v in sizes.values() for d in v)
    return {"batch_symbolic": symbolic,
            "dynamo_graphs": int(utils.counters["stats"].get("unique_graphs", 0)) - graphs}


def compile_record() -> dict:
    """Whether this point's torch.compile hit Inductor's caches (the sweep's per-sweep cache directory,
    `vramfit.sweep.pool`), and how long compilation took (Dynamo's own timers: forward and backward graphs)."""
    from torch._dynamo.utils import calculate_time_spent, counters

    ind, aot = counters["inductor"], counters["aot_autograd"]
    hits, misses = int(ind.get("fxgraph_cache_hit", 0)), int(ind.get("fxgraph_cache_miss", 0))
    if os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1":
        cache = "off"
    else:
        cache = "hit" if hits and not misses else "miss" if misses and not hits else "mixed" if hits else "none"
    spent = calculate_time_spent()
    secs = sum(v for k, v in spent.items() if k.startswith("entire_")) or None
    return {"compile_cache": cache, "compile_s": secs, "fxgraph_cache_hits": hits, "fxgraph_cache_misses": misses,
            "autograd_cache_hits": int(aot.get("autograd_cache_hit", 0))}


def _finish(pt: Point, failed: str | None, reader, step_times: list[float]) -> None:
    """Status (ok | oom | error), the last readings after a failure, the step times."""
    if failed is not None:
        pt.rec["status"] = failed
        gc.collect()
        try:
            if reader is not None:
                reader.read(pt.rec.get("iters") or 1)  # best effort: what the process held when it failed
        except Exception:  # noqa: BLE001
            pass
        if reader is not None:
            pt.rec.update(reader.record)
        return
    pt.rec.update(reader.record)
    over = reader.over_cap() if reader is not None else None
    if over:
        pt.rec.update(status="oom", error=over)
        return
    pt.rec["status"] = "ok"
    steady = step_times if pt.timing_iters else (step_times[2:] or step_times[1:] or step_times)
    pt.timings["step_ms"] = [round(t * 1000, 3) for t in steady]
    pt.rec["ms_per_iter"] = statistics.median(steady) * 1000
    pt.rec["tokens_per_s"] = pt.shape["batch_size"] * pt.shape["block_size"] / statistics.median(steady)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()  # the parent's PID comes in the environment (vramfit.child.PARENT_ENV)
    try:
        spec = json.loads(argv[0] if argv else sys.stdin.read())
        rec = run_point(spec)
    except Exception as exc:  # noqa: BLE001 - the record says what went wrong
        traceback.print_exc(file=sys.stderr)
        rec = {"status": "error", "error": _first_line(exc)}
        try:
            rec.update(Shape.of(spec["point"]).point())
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
