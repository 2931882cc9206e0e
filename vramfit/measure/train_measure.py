"""Train with the real loop while probing memory, so `vramfit train` can report predicted vs measured and
store the run as a new point (closing the loop).

The probe reads after every optimizer step until the reading is stable (the sweep worker's rule), then stops
reading so the rest of the run is not slowed: on CUDA, NVML (this process, else device used minus an idle
baseline) and the allocator counters; on the CPU, the live-storage tracker (allocator analogue) and peak RSS.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from gpt.config import TrainConfig
from gpt.train import Trainer, TrainResult, resolve_device, train
from vramfit.measure import probe
from vramfit.measure.worker import is_stable


class StepProbe:
    """Called after each optimizer step; collects readings until stable."""

    def __init__(self, device: str, window: int = 3, tolerance: float = 0.005, max_reads: int = 50) -> None:
        self.cuda = device.startswith("cuda")
        self.window, self.tolerance, self.max_reads = window, tolerance, max_reads
        self.history: list[list[int]] = []
        self.record: dict = {"stable": False, "iters": 0}
        self.done = False
        self.tracker: probe.StorageTracker | None = None
        if self.cuda:
            self.nvml = probe.NvmlProbe(index=torch.device(device).index or 0)
            self.baseline = self.nvml.device_used()  # before this process allocates anything on the GPU
            if not self.nvml.ok:
                self.record["nvml_note"] = f"NVML unavailable ({self.nvml.error}); torch counters only"
        else:
            probe.reset_peak_rss()
            self.rss0 = probe.rss_bytes()
            self.tracker = probe.StorageTracker()

    def __enter__(self) -> StepProbe:
        if self.tracker is not None:
            self.tracker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.tracker is not None and not self.done:
            self.tracker.__exit__(None, None, None)
        self.done = True

    def _read(self) -> list[int]:
        if self.cuda:
            torch.cuda.synchronize()
            c = probe.cuda_counters(torch.cuda.current_device())
            self.record.update(c)
            used, source = self.nvml.reading(self.baseline) if self.nvml.ok else (None, "none")
            if used is not None:
                self.record["nvml_bytes"] = max(self.record.get("nvml_bytes") or 0, used)
                self.record["nvml_source"] = source
            return [c["reserved_bytes"], self.record.get("nvml_bytes") or 0]  # fixed length for is_stable
        self.record["tracked_bytes"] = self.tracker.peak
        self.record["rss_bytes"] = max(0, probe.peak_rss_bytes() - self.rss0)
        return [self.record["tracked_bytes"]]

    def __call__(self, trainer: Trainer) -> None:
        if self.done:
            return
        if "n_layer" not in self.record:  # the shape actually trained (a resumed checkpoint's, the corpus vocab)
            mc = trainer.model_config
            self.record.update(n_layer=mc.n_layer, n_head=mc.n_head, n_embd=mc.n_embd, block_size=mc.block_size,
                               vocab_size=mc.vocab_size, batch_size=trainer.cfg.batch_size, dtype=trainer.dtype)
        reading = self._read()
        self.record["iters"] = trainer.iter_num
        if trainer.iter_num >= 2:  # Adam state exists from the first step on
            self.history.append(reading)
        if trainer.iter_num >= 3 and is_stable(self.history, self.window, self.tolerance):
            self.record["stable"] = True
            self._stop()
        elif len(self.history) >= self.max_reads:
            self._stop()


def train_and_measure(cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[TrainResult, dict]:
    """Run `gpt.train.train` under a StepProbe; returns the result and a store-ready point record."""
    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with StepProbe(device) as step_probe:
        result = train(cfg, log=log, on_step=step_probe)
    record = dict(step_probe.record)
    record.update(status="ok", ms_per_iter=result.ms_per_iter, tokens_per_s=result.tokens_per_s,
                  pid=os.getpid(), max_iters=cfg.max_iters)
    record.update(curve_fields(cfg, result, record))
    return result, record


def curve_fields(cfg: TrainConfig, result: TrainResult, shape: dict) -> dict:
    """What `vramfit fit --loss` needs from a run (stored in the point's `extra`): the loss curve, the corpus
    and the tokens per optimizer step, so tokens seen at iteration i are i * tokens_per_step. `shape`: the
    trained shape (the probe's record: a resumed checkpoint's shape wins over the config's)."""
    from gpt.config import count_params
    from vramfit.corpus import corpus_id

    g = {k: shape.get(k) or getattr(cfg, k, None) for k in ("n_layer", "n_embd", "block_size", "batch_size",
                                                            "vocab_size")}
    tokens_per_step = g["batch_size"] * g["block_size"] * cfg.gradient_accumulation_steps
    params = (int(count_params(g["n_layer"], g["n_embd"], g["block_size"], g["vocab_size"], cfg.bias))
              if g["vocab_size"] else None)
    return {"losses": [list(x) for x in result.losses], "evals": [list(x) for x in result.evals],
            "data_dir": str(cfg.data_dir), "corpus_id": corpus_id(cfg.data_dir), "tokens_per_step": tokens_per_step,
            "tokens_seen": result.iter_num * tokens_per_step, "learning_rate": cfg.learning_rate, "params": params}
