"""Multi-GPU data parallelism: launching `vramfit train` through torchrun, the per-GPU DDP memory terms, measuring
them.

Memory per GPU under DistributedDataParallel = the single-GPU step + two terms:
- DDP's gradient buckets: the reducer keeps its own flat copy of every gradient (bucket_cap_mb 25 per bucket, all
  parameters covered), i.e. one more gradient's worth of bytes per parameter (4 B/param for fp32 gradients, which
  AdamW with fp32 master weights has under bf16/fp16 autocast too): `ddp_params` = P under `--strategy ddp`, with
  `DDP_BYTES_PER_PARAM` bytes each. Measured on the CPU with gloo (2 processes, `measure_ddp`).
- NCCL's communicator (CUDA only): its buffers and kernels are allocated outside PyTorch's caching allocator, so
  they are neither capped by `set_per_process_memory_fraction` nor in `max_memory_reserved`, and gloo on the CPU
  has no counterpart. A constant per GPU, `NCCL_BYTES_ASSUMED`, until a GPU measures it: `measure_ddp(...,
  device='cuda')` reads NVML before and after process-group init plus a first all-reduce (`nccl_bytes`).
nanochat does not use DDP: its optimizer shards its states across the ranks instead (`zero2_state_bytes`), so a
nanochat plan for N GPUs subtracts the states the other ranks keep and adds NCCL's constant, no bucket term.
`python -m vramfit.plan.ddp` is the rank entry point of that measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vramfit.errors import VramfitError

STRATEGIES = ("ddp",)
DDP_BYTES_PER_PARAM = 4.0  # one fp32 copy of the gradients in DDP's buckets
# NCCL's per-GPU memory outside the caching allocator: ASSUMED, not measured. NCCL allocates per channel and peer a
# 4 MiB Simple-protocol buffer (NCCL_BUFFSIZE's default) plus LL/LL128 buffers, on up to 32 channels, and loads its
# kernels; reports of a few hundred MiB per GPU are common. 512 MiB errs on the safe side for planning; replace it
# with `nccl_bytes` from `measure_ddp(device='cuda')` on the GPUs in question.
NCCL_BYTES_ASSUMED = 512 * 2**20


SMALL_PARAM = 1024  # nanochat's MuonAdamW: AdamW parameters below this many elements are all-reduced, not sharded


def zero2_state_bytes(config, world: int, dtype: str = "bfloat16") -> int:  # noqa: ANN001 - a gpt GPTConfig
    """Optimizer-state bytes on each of `world` ranks under nanochat's MuonAdamW (`nanochat/optim.py`), which
    replaces DDP and shards the states ZeRO-2 style: an AdamW parameter of >= 1024 elements keeps exp_avg and
    exp_avg_sq of its own 1/world of the rows (reduce_scatter of the gradient, all_gather of the weights; base_train
    asserts the rows divide), a smaller one the whole state on every rank; each Muon group of K same-shape
    matrices is split into chunks of ceil(K/world) matrices, and a rank keeps the momentum and factored second
    moment of its chunk. Gradients and weights stay whole on every rank (no DDP buckets)."""
    from gpt.config import PARAM_GROUPS

    if world < 1:
        raise VramfitError(f"--gpus must be >= 1, got {world}")
    width = config.param_bytes(dtype)
    total = 0
    for group in PARAM_GROUPS:
        if group == "matrices":  # Muon's, below
            continue
        for rows, cols in config.param_shapes()[group]:
            n = (rows or 1) * cols
            if n < SMALL_PARAM or world == 1:
                total += 2 * n * width[group]
            elif rows % world:
                raise VramfitError(f"nanochat shards a {rows}x{cols} parameter's rows over {world} GPUs: {rows} "
                                   f"rows do not divide (base_train asserts it)")
            else:
                total += 2 * n // world * width[group]
    for (rows, cols), k in config.muon_stacks().items():
        total += -(-k // world) * (rows * cols + max(rows, cols)) * width["matrices"]
    return total


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
    import torch

    from gpt.limits import check_nproc

    device = next((a.split("=", 1)[1] for a in train_args if a.startswith("--device=")), None)
    if device is None and "--device" in train_args[:-1]:
        device = train_args[train_args.index("--device") + 1]
    check_nproc(nproc, device or "auto", torch.cuda.device_count())
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    return subprocess.run(torchrun_cmd(nproc, ["vramfit", "train", *train_args]), env=env).returncode


@dataclass
class DdpTerm:
    """The per-GPU DDP memory terms: bytes per parameter (buckets) and NCCL's constant, and where each comes from."""

    bytes_per_param: float = DDP_BYTES_PER_PARAM
    source: str = "physics: one fp32 gradient copy in DDP buckets"
    comm_bytes: float = NCCL_BYTES_ASSUMED
    comm_source: str = "assumed: NCCL buffers outside the caching allocator, not yet measured on a GPU"

    @classmethod
    def measured(cls, ranks: list[dict]) -> DdpTerm:
        """The default buckets term with NCCL's term measured on a GPU (the largest rank's `nccl_bytes`)."""
        vals = [r["nccl_bytes"] for r in ranks if r.get("nccl_bytes") is not None]
        if not vals:
            raise VramfitError("no rank measured NCCL's memory (NVML could not read the processes)")
        return cls(comm_bytes=float(max(vals)), comm_source=f"measured: NVML around NCCL init on {len(ranks)} rank(s)")


    @classmethod
    def for_device(cls, device_type: str | None) -> DdpTerm:
        """The default term for a profile of `device_type`: DDP on the CPU runs over gloo, which has no NCCL
        communicator and no GPU buffers, so the constant is 0 there; CUDA (or unknown) keeps NCCL's."""
        if device_type == "cpu":
            return cls(comm_bytes=0.0, comm_source="CPU profile: DDP over gloo, no NCCL buffers")
        return cls()


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
        return self.base.predict(X) + self.ddp_bytes(X) + self.term.comm_bytes

    def breakdown(self, X) -> list[dict]:
        parts = self.base.breakdown(X)
        for part, extra in zip(parts, self.ddp_bytes(X), strict=True):
            part["ddp buckets"] = float(extra)
            part["nccl buffers"] = float(self.term.comm_bytes)
        return parts


def for_strategy(model, gpus: int, strategy: str | None, term: DdpTerm | None = None,
                 device_type: str | None = None):
    """The model to plan `gpus` GPUs with: the single-GPU model for 1 GPU, + the DDP term for ddp (by default
    `DdpTerm.for_device(device_type)`: the profile's device type decides whether NCCL's constant applies)."""
    if gpus < 1:
        raise VramfitError(f"--gpus must be >= 1, got {gpus}")
    if strategy is None:
        strategy = "ddp" if gpus > 1 else None
    if strategy is not None and strategy not in STRATEGIES:
        raise VramfitError(f"unknown --strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if gpus == 1 and strategy is None:
        return model
    return DdpMemoryModel(model, term or DdpTerm.for_device(device_type))


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
                timeout: float = 300.0, device: str = "cpu") -> list[dict]:
    """Measure `point` (the six shape keys) with the sweep worker's `run_point` in each of `nproc` torchrun
    processes, the model wrapped in DDP; one record per rank. `device='cpu'`: gloo. `device='cuda'`: nccl, one
    visible GPU per rank, each rank's record with `nccl_bytes` (NVML around process-group init + a first
    all-reduce)."""
    from vramfit.measure.devices import PCI_ORDER, cpu_facts, nvml_devices
    from vramfit.recipe import Recipe
    from vramfit.sweep.grid import Measure
    from vramfit.sweep.pool import worker_env

    if nproc < 1:
        raise VramfitError(f"nproc must be >= 1, got {nproc}")
    m = Measure(**(measure or {}))
    cuda = device.startswith("cuda")
    facts = cpu_facts()
    gpus: list = []
    if cuda:
        gpus = nvml_devices()[0]
        if len(gpus) < nproc:
            raise VramfitError(f"DDP on CUDA needs {nproc} visible GPUs (NCCL refuses two ranks on one), "
                               f"have {len(gpus)}")
        facts = gpus[0]
    rec_d = facts.resolve(Recipe.from_dict(recipe or {})).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"point": point, "recipe": rec_d, "device": facts.torch_device, "measure": m.to_dict()}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = worker_env(facts, Recipe.from_dict(rec_d), m)
        if cuda:  # every rank sees the job's GPUs and pins its own (by LOCAL_RANK) before touching CUDA
            env.update(PCI_ORDER, CUDA_VISIBLE_DEVICES=",".join(g.gpu_uuid for g in gpus[:nproc]))
        env["VRAMFIT_DDP_DIR"] = tmp
        r = subprocess.run(torchrun_cmd(nproc, ["vramfit.plan.ddp"]), env=env, capture_output=True, text=True,
                           timeout=timeout)
        outs = sorted(Path(tmp).glob("rank*.json"))
        if r.returncode != 0 or len(outs) != nproc:
            raise VramfitError(f"DDP measurement failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return [json.loads(p.read_text()) for p in outs]


def comm_bytes(read: Callable[[], int | None], setup: Callable[[], None]) -> int | None:
    """This process's NVML bytes added by `setup` (NCCL process-group init and a first all-reduce, which creates
    the communicator): read after minus read before; None when NVML cannot read this process."""
    before = read()
    setup()
    after = read()
    return None if before is None or after is None else max(0, after - before)


def _cuda_rank(spec: dict, local_rank: int) -> int | None:
    """On CUDA: pin this rank to its GPU, create the context, then measure NCCL's memory around group init."""
    import torch
    import torch.distributed as dist

    from vramfit.measure.devices import nvml_devices
    from vramfit.measure.probe import NvmlProbe
    from vramfit.measure.reader import CudaReader

    gpu = nvml_devices()[0][local_rank]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu.gpu_uuid  # before any CUDA call: this rank sees only its GPU
    nv = NvmlProbe(gpu.gpu_uuid)
    spec.update(gpu_uuid=gpu.gpu_uuid, **nv.snapshot())
    reader = CudaReader(nv, 0, spec["idle_baseline"], spec["pids_before"])
    torch.cuda.set_device(0)
    torch.empty(1, device="cuda")

    def setup() -> None:
        dist.init_process_group(backend="nccl")
        t = torch.ones(1, device="cuda")
        dist.all_reduce(t)
        torch.cuda.synchronize()

    return comm_bytes(lambda: reader.nvml_now()[0], setup)


def _rank_main() -> int:
    """Entry point of one torchrun rank of `measure_ddp`: join the group, run the worker's point, write JSON."""
    import torch.distributed as dist

    from gpt.train import setup_distributed
    from vramfit.measure.worker import run_point

    out = Path(os.environ["VRAMFIT_DDP_DIR"])
    spec = json.loads((out / "spec.json").read_text())
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    nccl = None
    if spec.get("device", "cpu").startswith("cuda"):
        nccl = _cuda_rank(spec, local)
        started = True
    else:
        started = setup_distributed("cpu").started
    rec = run_point(spec)
    rec.pop("traceback", None)
    rec.update(rank=rank, world_size=int(os.environ.get("WORLD_SIZE", "1")), nccl_bytes=nccl)
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    if started and dist.is_initialized():
        import gc

        gc.collect()  # free the DDP reducer before its process group (as gpt.train.train does)
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main())
