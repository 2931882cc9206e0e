"""Train with the real loop while probing memory, so `vramfit train` can report predicted vs measured and
store the run as a new point (closing the loop).

The probe is the sweep worker's reader (`vramfit.measure.reader`): it reads after every optimizer step until the
readings are stable, then stops reading so the rest of the run is not slowed. On CUDA the GPU is the one torch
trains on, looked up in NVML by `torch.cuda.get_device_properties(d).uuid` (not by torch's index, which is not
NVML's under CUDA_VISIBLE_DEVICES), and the idle baseline is read before this process allocates anything on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from gpt.config import TrainConfig, resolve_recipe
from gpt.train import Trainer, TrainResult, resolve_device, train
from vramfit.measure.devices import torch_uuid
from vramfit.measure.probe import AllocatorPeak, NvmlProbe, training_state_bytes
from vramfit.measure.reader import CpuReader, CudaReader, MemoryReader, add_compiled_step, over_emulated_card
from vramfit.recipe import alloc_conf_in_force
from vramfit.shape import GPT2, arch_spec


def cuda_reader(device: str, emulate_bytes: int | None = None, cuda: Any = None) -> CudaReader:
    """A reader of the GPU `device` names, its baseline and compute PIDs taken before this process allocates on it:
    `get_device_properties` (no allocation, no context) gives the UUID NVML is asked for; then the caller creates
    the context and calls `start()`."""
    cuda = cuda or torch.cuda
    index = torch.device(device).index or 0
    uuid = torch_uuid(cuda.get_device_properties(index))
    nv = NvmlProbe(uuid, index)  # index: only where torch has no UUID (then NVML's order is assumed)
    snap = nv.snapshot()
    reader = CudaReader(nv, index, snap["idle_baseline"], snap["pids_before"], emulate_bytes, cuda=cuda)
    reader.record.update(gpu_uuid=uuid, idle_baseline=snap["idle_baseline"])
    return reader


class StepProbe:
    """Called after each optimizer step; reads until the readings are stable (or `max_reads` steps).

    `compiled` (a torch.compile'd trainer on the CPU): the tracker lets Dynamo compile and leaves step 1 out (as the
    sweep worker's, `CpuReader(compiled=True)`), and once the readings are stable the next step runs under the CPU
    allocator's profiler, so that `tracked_bytes` counts Inductor's buffers (the worker's `_compiled_cpu_reading`)."""

    def __init__(self, device: str, window: int = 3, tolerance: float = 0.005, max_reads: int = 50,
                 emulate_bytes: int | None = None, compiled: bool = False) -> None:
        self.cuda = device.startswith("cuda")
        self.max_reads = max_reads
        self.device = device
        self.compiled_cpu = compiled and not self.cuda
        dev_reader = (cuda_reader(device, emulate_bytes) if self.cuda
                      else CpuReader(emulate_bytes, compiled=self.compiled_cpu))
        self.reader = MemoryReader(dev_reader, window, tolerance, min_iters=3)
        self.done = False
        self._window: AllocatorPeak | None = None  # the profiled step of a compiled CPU trainer
        self._pending = False  # a compiled CPU trainer's readings are stable: profile the next clean step
        self._live = 0

    @property
    def record(self) -> dict:
        return {"iters": 0, **self.reader.record}

    def __enter__(self) -> StepProbe:
        if self.cuda:
            index = torch.device(self.device).index or 0
            torch.cuda.set_device(index)
            torch.empty(1, device=f"cuda:{index}")  # the context, after the baseline
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._window is not None:  # training ended before the profiled step did
            self._window.cancel()
            self._window = None
        self._stop()

    def _stop(self) -> None:
        if not self.done:
            self.reader.stop()
        self.done = True

    def __call__(self, trainer: Trainer) -> None:
        if self._window is not None:
            step, self._window = self._window.stop(), None
            add_compiled_step(self.reader.record, self._live, step)
            self.reader.record["compiled_reading"] = "allocator"
            self._pending = False
            return
        if self.done:
            if self._pending:
                self._open_window(trainer)
            return
        rec = self.reader.record
        if "n_layer" not in rec:  # the shape actually trained (a resumed checkpoint's, the corpus vocab)
            mc = trainer.model_config
            rec.update(n_layer=mc.n_layer, n_head=mc.n_head, n_embd=mc.n_embd, block_size=mc.block_size,
                       vocab_size=mc.vocab_size, batch_size=trainer.cfg.batch_size, dtype=trainer.dtype,
                       compile=trainer.compile, n_params=mc.n_params())
            if (arch := arch_spec(mc)) != GPT2:  # the family where it is not GPT-2's (a point's identity)
                rec["arch"] = arch
        rec["iters"] = trainer.iter_num
        reads = rec.get("reads", 0) + 1
        rec["reads"] = reads
        if self.reader.after_step(reads) or reads >= self.max_reads:
            self._stop()
            if self.compiled_cpu:
                self._pending = True
                self.reader.record["compiled_reading"] = "dispatcher only: no step left to profile"
                self._open_window(trainer)

    def _open_window(self, trainer: Trainer) -> None:
        """Profile the next step if nothing but that step runs before the next call: not after an iteration that
        evaluates and checkpoints (`gpt.train`: every eval_interval and the last), nor after the last one."""
        it, cfg = trainer.iter_num, trainer.cfg
        if it >= cfg.max_iters or (cfg.eval_interval and it % cfg.eval_interval == 0):
            return
        self._live = training_state_bytes(trainer.model, trainer.optimizer)
        self._window = AllocatorPeak()
        self._window.start()


def train_and_measure(cfg: TrainConfig, log: Callable[[str], None] = print,
                      emulate_bytes: int | None = None) -> tuple[TrainResult, dict]:
    """Run `gpt.train.train` under a StepProbe; returns the result and a store-ready point record.
    `emulate_bytes`: cap the process like the sweep worker does for an emulated card (CUDA)."""
    device = resolve_device(cfg.device)
    compiled = resolve_recipe(cfg.dtype, cfg.compile, cfg.optimizer, device.split(":")[0], None)[1]
    # the baseline first: no CUDA call before
    with StepProbe(device, emulate_bytes=emulate_bytes, compiled=compiled) as step_probe:
        result = train(cfg, log=log, on_step=step_probe)
    record = dict(step_probe.record)
    if record.get("compiled_reading", "allocator") != "allocator":
        log("warning: the compiled step's own buffers are not in this reading (no training step was left to profile "
            "once memory was stable: raise --max-iters)")
    over = step_probe.reader.device.over_cap()
    if not over and record.get("compiled_reading") == "allocator":  # the tracker's cap missed Inductor's buffers
        over = over_emulated_card(record["tracked_bytes"], emulate_bytes)
    record.update(status="oom" if over else "ok", ms_per_iter=result.ms_per_iter, tokens_per_s=result.tokens_per_s,
                  pid=os.getpid(), max_iters=cfg.max_iters, alloc_conf=alloc_conf_in_force(os.environ))
    if over:
        record["error"] = over
    if emulate_bytes:
        record["emulate_bytes"] = int(emulate_bytes)
    record.update(curve_fields(cfg, result, record))
    return result, record


def curve_fields(cfg: TrainConfig, result: TrainResult, shape: dict) -> dict:
    """What `vramfit fit --loss` needs from a run (stored in the point's `extra`): the loss curve, the corpus
    and the tokens per optimizer step, so tokens seen at iteration i are i * tokens_per_step. `shape`: the
    trained shape (the probe's record: a resumed checkpoint's shape and the corpus vocabulary win over the
    config's); its parameters are the trained model's own count (`GPTConfig.n_params`, either family)."""
    from vramfit.corpus import corpus_id

    g = {k: shape.get(k) or getattr(cfg, k, None) for k in ("n_layer", "n_embd", "block_size", "batch_size",
                                                            "vocab_size")}
    tokens_per_step = g["batch_size"] * g["block_size"] * cfg.gradient_accumulation_steps
    params = shape.get("n_params")
    if params is None and g["vocab_size"]:  # no step was probed: the config's model with the run's vocabulary
        params = cfg.model_config(g["vocab_size"]).n_params()
    return {"losses": [list(x) for x in result.losses], "evals": [list(x) for x in result.evals],
            "data_dir": str(cfg.data_dir), "corpus_id": corpus_id(cfg.data_dir), "tokens_per_step": tokens_per_step,
            "tokens_seen": result.iter_num * tokens_per_step, "learning_rate": cfg.learning_rate, "params": params}
