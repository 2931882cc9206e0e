"""How a CUDA point is measured (issue 12 items 4-9), on the CPU: the real readers over a fake `pynvml` and a fake
`torch.cuda` (tests/fake_gpu.py, which cites the nvidia-ml-py and PyTorch behaviour each fake reproduces)."""

import json
import os
import sys
import types

import pandas as pd
import pytest
from fake_gpu import MIB, FakeCuda, FakeDevice, fake_pynvml

from vramfit.measure.probe import NvmlProbe
from vramfit.measure.reader import (
    CudaReader,
    MemoryReader,
    allocator_fraction,
    foreign_processes,
    nvml_peak,
    own_process,
)

HOST_PID = 4_000_000  # a host PID as NVML reports it inside a container: never os.getpid()


@pytest.fixture
def gpu(monkeypatch):
    """One fake GPU behind a fake pynvml; returns (device, pynvml module)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dev = FakeDevice("GPU-aaaaaaaa")
    mod = fake_pynvml([dev])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return dev, mod


def reader_for(dev, cuda, snapshot, emulate=None, pid=None):
    nv = NvmlProbe(dev.uuid)
    return CudaReader(nv, 0, snapshot["idle_baseline"], snapshot["pids_before"], emulate, cuda=cuda,
                      pid=os.getpid() if pid is None else pid)


# ------------------------------------------------------------------------------------------ item 4


def test_container_host_pid_is_found_by_the_snapshot_taken_before_the_worker(gpu):
    """In a container NVML's compute-process list holds host PIDs (pynvml: c_nvmlProcessInfo_t.pid), so matching
    os.getpid() never succeeds and the reading fell back to device-minus-baseline. The parent snapshots the PIDs
    before spawning; the one new PID is the worker's own, and its usedGpuMemory is the per-process reading."""
    dev, _ = gpu
    dev.procs = {111: 900 * MIB}  # a foreign process, there before the worker
    snap = NvmlProbe(dev.uuid).snapshot()
    assert snap["pids_before"] == [111]
    cuda = FakeCuda(dev, HOST_PID, context=300 * MIB)  # the worker's context appears under its host PID
    r = reader_for(dev, cuda, snap)
    r.start()
    assert r.record["context_bytes"] == 300 * MIB
    assert (r.record["nvml_pid"], r.record["nvml_pid_match"]) == (HOST_PID, "snapshot")
    cuda.step(reserved=1000 * MIB)
    r.read(2)
    assert r.record["nvml_source"] == "pid" and r.record["nvml_bytes"] == 1300 * MIB  # not + the foreign 900 MiB
    assert r.record["foreign_procs"] == 1


def test_foreign_processes_make_a_device_baseline_reading_shared_and_the_fit_leaves_it_out(gpu):
    """When our process cannot be told apart (two new PIDs: a second sweep started at the same time), the reading
    is device used minus baseline, which counts the other process: it is marked 'device-shared'; `fit` leaves such
    points out unless --allow-shared-gpu."""
    from vramfit.fit.memmodel import trusted_points

    dev, _ = gpu
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, HOST_PID)
    dev.procs[HOST_PID + 1] = 2000 * MIB  # another sweep's worker, started meanwhile
    cuda._sync()
    r = reader_for(dev, cuda, snap)
    r.start()
    cuda.step(reserved=1000 * MIB)
    r.read(2)
    assert r.record["nvml_source"] == "device-shared" and r.record["foreign_procs"] == 1
    assert r.record["nvml_bytes"] >= 3300 * MIB  # ours (1300) + theirs (2000): why it must not be fitted
    df = pd.DataFrame({"nvml_source": ["pid", "device-baseline", "device-shared", None]})
    assert list(trusted_points(df, "nvml").nvml_source.fillna("-")) == ["pid", "device-baseline", "-"]
    assert len(trusted_points(df, "nvml", allow_shared=True)) == 4
    assert len(trusted_points(df, "allocated")) == 4  # the allocator's counters are per process anyway


def test_used_gpu_memory_none_falls_back_to_device_minus_baseline(gpu):
    """pynvml sets usedGpuMemory to None where NVML_VALUE_NOT_AVAILABLE is returned (Windows WDDM; MIG without
    privileges): the reading then is device used minus the idle baseline."""
    dev, _ = gpu
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid())
    r = reader_for(dev, cuda, snap)
    r.start()
    cuda.step(reserved=1000 * MIB)
    dev.procs[os.getpid()] = None  # NVML_VALUE_NOT_AVAILABLE: pynvml reports None; the memory is still used
    r.read(2)
    assert r.record["nvml_source"] == "device-baseline" and r.record["nvml_bytes"] == 1300 * MIB


def test_old_driver_without_v3_structs_or_memory_v2_still_reads(monkeypatch):
    """nvidia-ml-py's unversioned nvmlDeviceGetComputeRunningProcesses is the v3 call under throwOnVersionMismatch
    (NVMLLibraryMismatchError on drivers without the v3 symbol): the probe falls back to the _v2 call; likewise
    nvmlDeviceGetMemoryInfo_v2 (NVMLError_FunctionNotFound) falls back to the v1 struct."""
    dev = FakeDevice("GPU-old", procs={os.getpid(): 700 * MIB})
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([dev], v3=False, memory_v2=False))
    nv = NvmlProbe("GPU-old")
    assert nv.processes() == [(os.getpid(), 700 * MIB)] and nv.process_used() == 700 * MIB
    assert nv.device_used() == dev.used and nv.device_total() == dev.total


def test_identifying_our_process_and_counting_the_others():
    """The pure decisions behind item 4 over (pid, usedGpuMemory) pairs as pynvml's process list gives them
    (c_nvmlProcessInfo_t): our PID by os.getpid(), else the single PID new since the snapshot, else unknown."""
    me = 42
    assert own_process([(me, 1), (7, 1)], [7], me) == (me, "getpid")
    assert own_process([(HOST_PID, 1), (7, 1)], [7], me) == (HOST_PID, "snapshot")
    assert own_process([(HOST_PID, 1), (HOST_PID + 1, 1)], [], me) == (None, None)  # ambiguous
    assert own_process([(HOST_PID, 1)], None, me) == (None, None)  # no snapshot
    assert own_process(None, [], me) == (None, None)
    assert foreign_processes([(HOST_PID, 1), (7, 1)], HOST_PID) == 1
    assert foreign_processes([(HOST_PID, 1)], None) == 0 and foreign_processes([(1, 1), (2, 1)], None) == 1


def test_the_sweep_parent_snapshots_pids_before_spawning(gpu, monkeypatch):
    """complete_spec (every executor) carries the idle baseline (nvmlDeviceGetMemoryInfo used) and the compute PIDs
    already on the GPU (nvmlDeviceGetComputeRunningProcesses), read just before the worker is spawned."""
    from vramfit.measure.devices import resolve
    from vramfit.sweep.executors import complete_spec

    dev, _ = gpu
    dev.procs = {111: 5 * MIB}
    (facts,) = resolve("cuda")
    spec = complete_spec({"point": {}}, facts)
    assert spec["pids_before"] == [111] and spec["idle_baseline"] == dev.used and spec["gpu_uuid"] == dev.uuid


# ------------------------------------------------------------------------------------------ item 5


def _fake_train(cuda, steps):
    """A stand-in for gpt.train.train: calls on_step after each simulated step."""
    from gpt.train import TrainResult

    def train(cfg, log=print, on_step=None):
        trainer = types.SimpleNamespace(model_config=cfg.model_config(1024), cfg=cfg, dtype="bfloat16",
                                        compile=True, iter_num=0)
        for reserved in steps:
            cuda.step(reserved=reserved)
            trainer.iter_num += 1
            on_step(trainer)
        return TrainResult(trainer.iter_num, [], [], 10.0, 1000.0, None, 1.0, None)
    return train


def test_train_measure_finds_its_gpu_by_torch_uuid_and_reads_the_baseline_first(monkeypatch, tmp_path):
    """`vramfit train --measure --device cuda:1` under CUDA_VISIBLE_DEVICES=2,1: torch's index 1 is NOT NVML's 1.
    The probe asks torch.cuda.get_device_properties(1).uuid and opens NVML by it; the idle baseline and PIDs are
    read before the context exists (only get_device_properties, which allocates nothing, came before); the run is
    stored under the facts of that GPU."""
    import vramfit.measure.train_measure as tm
    from gpt.config import make_config
    from vramfit.plan.workflows import compare_and_store
    from vramfit.store import Store

    gpus = [FakeDevice(f"GPU-{c * 8}", name=f"Card {c}") for c in "abc"]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    cuda = FakeCuda(gpus[1], HOST_PID, context=250 * MIB)  # torch's cuda:1 is NVML's GPU 1 ('b') here
    gpus[1].procs.clear()
    contexts = []
    monkeypatch.setattr(tm.torch, "empty", lambda *a, **k: (contexts.append(list(cuda.calls)), cuda._sync()))
    monkeypatch.setattr(tm, "resolve_device", lambda d: d)
    monkeypatch.setattr(tm, "train", _fake_train(cuda, [800 * MIB, 900 * MIB, 900 * MIB, 900 * MIB, 900 * MIB]))
    monkeypatch.setattr(tm.torch.cuda, "set_device", lambda i: None)
    real_reader = tm.cuda_reader
    monkeypatch.setattr(tm, "cuda_reader", lambda device, emulate=None: real_reader(device, emulate, cuda=cuda))
    cfg = make_config({"device": "cuda:1", "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8,
                       "batch_size": 2, "vocab_size": 1024, "data_dir": str(tmp_path)})
    _, rec = tm.train_and_measure(cfg, log=lambda m: None)
    assert rec["gpu_uuid"] == "GPU-bbbbbbbb" and rec["idle_baseline"] == 400 * MIB
    assert contexts == [["get_device_properties"]]  # the context came after the snapshot, nothing else before
    assert rec["context_bytes"] == 250 * MIB and rec["nvml_source"] == "pid" and rec["stable"]
    assert rec["nvml_bytes"] == 1150 * MIB and rec["compile"] is True
    lines = compare_and_store(cfg, {**rec, "status": "ok"}, None, tmp_path / "db.sqlite")
    with Store(tmp_path / "db.sqlite") as s:
        df = s.points_frame()
    assert df.device_name.tolist() == ["Card b"] and df.gpu_uuid.tolist() == ["GPU-bbbbbbbb"], lines
    assert json.loads(df.recipe.iloc[0])["compile"] is True


# ------------------------------------------------------------------------------------------ items 6, 7, 8


def test_emulated_card_is_recapped_after_step_one_so_the_whole_process_fits(gpu):
    """torch/cuda/memory.py: set_per_process_memory_fraction limits the caching allocator to fraction * total; the
    context, cuBLAS/cuDNN handles, lazily loaded kernels and Triton modules are outside it. After step 1 the cap is
    set again from NVML so that context + non-allocator + allocator stays within the emulated card."""
    dev, _ = gpu
    card = 4096 * MIB
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid(), context=300 * MIB)
    r = MemoryReader(reader_for(dev, cuda, snap, emulate=card))
    r.start()
    assert cuda.fraction == pytest.approx((card - 300 * MIB) / dev.total)
    cuda.step(reserved=1200 * MIB, cached=200 * MIB, non_allocator=350 * MIB)  # cuBLAS, kernels, autotuning
    r.after_step(1)
    assert cuda.fraction == pytest.approx((card - 650 * MIB) / dev.total)
    assert r.record["non_allocator_bytes"] == 650 * MIB
    assert r.record["allocator_cap_bytes"] == pytest.approx(card - 650 * MIB, abs=1)
    assert allocator_fraction(card, card + 1, dev.total) is None
    for step in (2, 3, 4):
        cuda.step(reserved=1000 * MIB)
        r.after_step(step)
    assert r.over_cap() is None


def test_the_first_cap_leaves_the_context_tensors_segment_to_the_allocator(gpu):
    """The worker creates the context with a 1-element tensor, for which the caching allocator reserves a 2 MiB
    segment (c10/cuda/CUDACachingAllocator.cpp: a request <= kSmallSize is served from a kSmallBuffer segment).
    NVML counts it, but it is the allocator's: the context is NVML minus memory_reserved(), and the first cap
    (card - context) must not count the segment twice (it was 2 MiB too tight)."""
    dev, _ = gpu
    card = 4096 * MIB
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid(), context=300 * MIB)
    cuda.step(reserved=2 * MIB, cached=2 * MIB - 512)  # torch.empty(1, device='cuda')
    r = MemoryReader(reader_for(dev, cuda, snap, emulate=card))
    r.start()
    assert r.record["context_bytes"] == 300 * MIB
    assert cuda.fraction * dev.total == pytest.approx(card - 300 * MIB, abs=1)


def test_a_point_over_the_emulated_card_by_nvml_is_an_oom(gpu):
    """The allocator cap cannot see non-allocator growth after step 1: when the process's NVML peak exceeds the
    emulated card, the worker records the point as oom (not ok)."""
    from vramfit.measure.worker import Point, _finish

    dev, _ = gpu
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid(), context=300 * MIB)
    r = MemoryReader(reader_for(dev, cuda, snap, emulate=2048 * MIB))
    r.start()
    cuda.step(reserved=1000 * MIB)
    r.after_step(1)
    cuda.step(reserved=1000 * MIB, non_allocator=900 * MIB)  # e.g. a module loaded in step 2
    r.after_step(2)
    spec = {"point": dict(n_layer=1, n_head=1, n_embd=8, block_size=8, batch_size=2, vocab_size=16),
            "device": "cuda", "emulate_bytes": 2048 * MIB}
    pt = Point(spec, 0.0)
    _finish(pt, None, r, [0.01, 0.01])
    assert pt.rec["status"] == "oom" and "emulated card" in pt.rec["error"]


def test_the_peak_is_read_from_the_allocators_high_water_mark(gpu):
    """c10/cuda/CUDACachingAllocator.cpp: when cudaMalloc fails the allocator frees cached blocks and retries, so
    at the end of a step near the cap NVML shows less than the step's peak. The peak is
    nvml_now - memory_reserved() + max_memory_reserved(); the raw reading is kept."""
    dev, _ = gpu
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid(), context=300 * MIB)
    r = reader_for(dev, cuda, snap)
    r.start()
    cuda.step(reserved=600 * MIB, peak_reserved=1500 * MIB)  # 900 MiB of cache released mid-step
    r.read(2)
    assert r.record["nvml_raw_bytes"] == 900 * MIB
    assert r.record["nvml_bytes"] == 1800 * MIB == nvml_peak(900 * MIB, 600 * MIB, 1500 * MIB)


def test_step_one_is_left_out_of_the_peak(gpu):
    """Step 1 holds compile autotuning and benchmark buffers. After it: empty_cache(), reset_peak_memory_stats()
    (torch/cuda/memory.py) and the NVML maxima start over, so the peak covers steps 2..N and says so."""
    dev, _ = gpu
    snap = NvmlProbe(dev.uuid).snapshot()
    cuda = FakeCuda(dev, os.getpid(), context=300 * MIB)
    r = MemoryReader(reader_for(dev, cuda, snap), window=3, tolerance=0.01)
    r.start()
    cuda.step(reserved=1400 * MIB, cached=400 * MIB)  # autotuning buffers, cached after step 1
    assert not r.after_step(1)
    assert cuda.calls[-2:] == ["empty_cache", "reset_peak_memory_stats"]
    stable = [r.after_step(s) for s in (2, 3, 4) if cuda.step(reserved=1000 * MIB) is None]
    assert stable == [False, False, True]
    assert r.record["nvml_bytes"] == 1300 * MIB and r.record["reserved_bytes"] == 1000 * MIB
    assert r.record["peak_steps"] == [2, 4]


# ------------------------------------------------------------------------------------------ item 9


def test_ddp_plan_adds_nccl_buffers_per_gpu():
    """NCCL allocates its communicator's buffers outside the caching allocator: not capped, not in
    max_memory_reserved, not in the 4 B/param bucket term (measured with gloo on the CPU). The plan adds it per GPU,
    the documented assumption until `measure_ddp(device='cuda')` measures it."""
    import numpy as np
    from planner_data import synthetic_points

    from vramfit.fit.features import features
    from vramfit.fit.memmodel import fit_points
    from vramfit.plan.ddp import DDP_BYTES_PER_PARAM, NCCL_BYTES_ASSUMED, DdpTerm, comm_bytes, for_strategy

    base = fit_points(synthetic_points(), target="nvml").model
    X = features(np.array([4]), np.array([4]), np.array([256]), np.array([256]), np.array([8]), np.array([1024]))
    ddp = for_strategy(base, 2, None)
    extra = float(ddp.predict(X)[0] - base.predict(X)[0])
    assert extra == pytest.approx(DDP_BYTES_PER_PARAM * float(X["params"][0]) + NCCL_BYTES_ASSUMED)
    assert ddp.breakdown(X)[0]["nccl buffers"] == NCCL_BYTES_ASSUMED
    assert "assumed" in ddp.term.comm_source
    measured = DdpTerm.measured([{"nccl_bytes": 300 * MIB}, {"nccl_bytes": 310 * MIB}])
    assert measured.comm_bytes == 310 * MIB and measured.comm_source.startswith("measured")
    reads = iter([1000 * MIB, 1350 * MIB])
    assert comm_bytes(lambda: next(reads), lambda: None) == 350 * MIB
    assert comm_bytes(lambda: None, lambda: None) is None
    cpu = for_strategy(base, 2, None, device_type="cpu")  # a CPU profile's DDP runs over gloo: no NCCL
    assert float(cpu.predict(X)[0] - base.predict(X)[0]) == pytest.approx(DDP_BYTES_PER_PARAM * float(X["params"][0]))
    assert cpu.breakdown(X)[0]["nccl buffers"] == 0 and "gloo" in cpu.term.comm_source
    assert for_strategy(base, 2, None, device_type="cuda").term.comm_bytes == NCCL_BYTES_ASSUMED


def test_measure_ddp_on_cuda_needs_a_gpu_per_rank(gpu):
    """NCCL refuses two ranks on one GPU ('Duplicate GPU detected'), so a CUDA DDP measurement needs nproc GPUs."""
    from vramfit.errors import VramfitError
    from vramfit.plan.ddp import measure_ddp

    with pytest.raises(VramfitError, match="needs 2 visible GPUs"):
        measure_ddp({}, nproc=2, device="cuda")
