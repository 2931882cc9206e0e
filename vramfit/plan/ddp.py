"""Multi-GPU data parallelism: launching `vramfit train` through torchrun, the per-GPU DDP memory term, measuring it.

Memory per GPU under DistributedDataParallel = the single-GPU step + DDP's gradient buckets: the reducer keeps
its own flat copy of every gradient (bucket_cap_mb 25 per bucket, all parameters covered), i.e. one more
gradient's worth of bytes per parameter (4 B/param for fp32 gradients, which AdamW with fp32 master weights has
under bf16/fp16 autocast too). So the model gains one term, `ddp_params` = P under `--strategy ddp` (0 otherwise),
with `DDP_BYTES_PER_PARAM` bytes each, in both regimes (the buckets live from the first backward on). Measured on
the CPU with gloo (2 processes, `measure_ddp`); `python -m vramfit.plan.ddp` is the rank entry point of that
measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vramfit.errors import VramfitError

STRATEGIES = ("ddp",)
DDP_BYTES_PER_PARAM = 4.0  # one fp32 copy of the gradients in DDP's buckets


def torchrun_cmd(nproc: int, module_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m <module args>` (one node)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
            "-m", *module_args]


def under_torchrun() -> bool:
    """True inside a process torchrun started (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_train(nproc: int, train_args: list[str]) -> int:
    """Re-run `vramfit train <train_args>` as `nproc` DDP processes on this node; torchrun's exit code."""
    if nproc < 2:
        raise VramfitError(f"--nproc must be >= 2 to launch DDP, got {nproc}")
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    return subprocess.run(torchrun_cmd(nproc, ["vramfit", "train", *train_args]), env=env).returncode


@dataclass
class DdpTerm:
    """The per-GPU DDP memory term: bytes per parameter (and where the number comes from)."""

    bytes_per_param: float = DDP_BYTES_PER_PARAM
    source: str = "physics: one fp32 gradient copy in DDP buckets"


class DdpMemoryModel:
    """A fitted single-GPU `MemoryModel` plus the DDP term: per-GPU bytes = model(x) + k * ddp_params.

    Quacks like MemoryModel for `suggest` (predict, breakdown, intercept_)."""

    def __init__(self, base, term: DdpTerm | None = None) -> None:
        self.base = base
        self.term = term or DdpTerm()

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def ddp_bytes(self, X) -> np.ndarray:
        return self.term.bytes_per_param * np.asarray(X["params"], dtype=np.float64)

    def predict(self, X) -> np.ndarray:
        return self.base.predict(X) + self.ddp_bytes(X)

    def breakdown(self, X) -> list[dict]:
        parts = self.base.breakdown(X)
        for part, extra in zip(parts, self.ddp_bytes(X), strict=True):
            part["ddp buckets"] = float(extra)
        return parts


def for_strategy(model, gpus: int, strategy: str | None, term: DdpTerm | None = None):
    """The model to plan `gpus` GPUs with: the single-GPU model for 1 GPU, + the DDP term for ddp."""
    if gpus < 1:
        raise VramfitError(f"--gpus must be >= 1, got {gpus}")
    if strategy is None:
        strategy = "ddp" if gpus > 1 else None
    if strategy is not None and strategy not in STRATEGIES:
        raise VramfitError(f"unknown --strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if gpus == 1 and strategy is None:
        return model
    return DdpMemoryModel(model, term)


def multi_gpu(items: list, gpus: int) -> list:
    """Suggestions for `gpus` GPUs: tokens per optimizer step times `gpus`, commands launched with --nproc."""
    if gpus <= 1:
        return items
    for s in items:
        s.tokens_per_step *= gpus
        s.command = s.command.replace("vramfit train ", f"vramfit train --nproc {gpus} ", 1)
    return items


# ---------------------------------------------------------------------------------------------- measurement

def measure_ddp(point: dict, nproc: int = 2, recipe: dict | None = None, measure: dict | None = None,
                timeout: float = 300.0) -> list[dict]:
    """Measure `point` (the six shape keys) with the sweep worker's `run_point` in each of `nproc` torchrun
    processes (gloo on the CPU, nccl on CUDA), the model wrapped in DDP; one record per rank."""
    from vramfit.measure.devices import cpu_facts
    from vramfit.recipe import Recipe
    from vramfit.sweep.grid import Measure
    from vramfit.sweep.pool import worker_env

    rec_d = Recipe.from_dict(recipe or {}).resolved("cpu").to_dict()
    m = Measure(**(measure or {}))
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"point": point, "recipe": rec_d, "device": "cpu", "measure": m.to_dict()}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = worker_env(cpu_facts(), Recipe.from_dict(rec_d), m)
        env["VRAMFIT_DDP_DIR"] = tmp
        r = subprocess.run(torchrun_cmd(nproc, ["vramfit.plan.ddp"]), env=env, capture_output=True, text=True,
                           timeout=timeout)
        outs = sorted(Path(tmp).glob("rank*.json"))
        if r.returncode != 0 or len(outs) != nproc:
            raise VramfitError(f"DDP measurement failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return [json.loads(p.read_text()) for p in outs]


def _rank_main() -> int:
    """Entry point of one torchrun rank of `measure_ddp`: join the group, run the worker's point, write JSON."""
    import torch.distributed as dist

    from gpt.train import setup_distributed
    from vramfit.measure.worker import run_point

    out = Path(os.environ["VRAMFIT_DDP_DIR"])
    spec = json.loads((out / "spec.json").read_text())
    info = setup_distributed(spec.get("device", "cpu"))
    rec = run_point(spec)
    rec.pop("traceback", None)
    rec.update(rank=info.rank, world_size=info.world_size)
    (out / f"rank{info.rank}.json").write_text(json.dumps(rec))
    if info.started:
        import gc

        gc.collect()  # free the DDP reducer before its process group (as gpt.train.train does)
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main())
