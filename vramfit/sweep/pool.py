"""Worker processes: the environment a point is measured in, one fresh process per point, kill on interrupt."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from vramfit.child import LiveChildren, run_json
from vramfit.measure.devices import PCI_ORDER, DeviceFacts
from vramfit.recipe import Recipe
from vramfit.sweep.grid import Measure

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_CMD = [sys.executable, "-m", "vramfit.measure.worker"]
STDERR_TAIL = 800


def worker_env(facts: DeviceFacts, recipe: Recipe, measure: Measure) -> dict[str, str]:
    """The worker's environment: RSS that follows frees (glibc mmap threshold, no MKL buffer cache) and
    `measure.threads` threads on CPU; on CUDA the GPU by UUID (chosen among the GPUs the inherited
    CUDA_VISIBLE_DEVICES allows, see `devices.visible_devices`), CUDA_DEVICE_ORDER=PCI_BUS_ID (CUDA's ordinals in
    NVML's order) and the recipe's PYTORCH_CUDA_ALLOC_CONF (the recipe is authoritative: an inherited value is
    removed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if facts.device_type == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        env["MALLOC_TRIM_THRESHOLD_"] = "0"
        env["MKL_DISABLE_FAST_MM"] = "1"  # MKL's buffer cache would keep ~2 MB of RSS that no tensor owns
        if measure.threads > 0:
            env["OMP_NUM_THREADS"] = str(measure.threads)
            env["MKL_NUM_THREADS"] = str(measure.threads)
    else:
        env.update(PCI_ORDER)
        if facts.gpu_uuid:
            env["CUDA_VISIBLE_DEVICES"] = facts.gpu_uuid
        elif facts.index is not None and not os.environ.get("CUDA_VISIBLE_DEVICES"):  # torch facts, no NVML
            env["CUDA_VISIBLE_DEVICES"] = str(facts.index)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if recipe.alloc_conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = recipe.alloc_conf
    return env


class WorkerPool:
    """Runs worker processes and remembers the live ones so that they can be killed on interrupt."""

    def __init__(self, cmd: list[str] | None = None) -> None:
        self.cmd = list(cmd or WORKER_CMD)
        self.live = LiveChildren()

    def run(self, spec: dict, env: dict[str, str], timeout: float) -> dict:
        """One point in one fresh process; always returns a record (ok | oom | error | timeout)."""
        spec = {**spec, "spawn_time": time.time()}
        point = spec["point"]
        res = run_json(self.cmd, spec, timeout, env=env, live=self.live)
        if res.timed_out:
            return {**point, "status": "timeout",
                    "error": f"timed out after {timeout:g} s; stderr: {res.stderr_tail(STDERR_TAIL)}"}
        rec = res.last_record()
        if res.returncode != 0 or rec is None:
            why = res.exit_text() if res.returncode != 0 else "no JSON record on stdout"
            return {**point, "status": "error", "error": f"worker {why}; stderr: {res.stderr_tail(STDERR_TAIL)}"}
        rec.update(point)  # the record is about the point we asked for
        if isinstance(rec.get("timings"), dict):
            rec["timings"]["wall"] = time.time() - spec["spawn_time"]  # as the parent saw it, exit included
        return rec

    def kill_all(self) -> None:
        self.live.kill_all()


def gpu_snapshot(d: DeviceFacts) -> dict:
    """Taken just before a worker starts on `d`: device used bytes (the idle baseline, the fallback when the worker
    cannot find its own process in NVML) and the compute PIDs already there (so that the worker can recognise its
    own host PID in a container as the one new PID). Empty for a CPU."""
    if d.device_type != "cuda":
        return {}
    from vramfit.measure.probe import NvmlProbe

    return NvmlProbe(d.gpu_uuid, d.nvml_index if d.nvml_index is not None else d.index or 0).snapshot()


def point_spec(point: dict, recipe: Recipe, d: DeviceFacts, measure: Measure, emulate_bytes: int | None) -> dict:
    """The worker's input for one point on one device (the adaptive and boundary planners' single queue)."""
    return {"point": point, "recipe": recipe.to_dict(), "device": d.torch_device, "gpu_uuid": d.gpu_uuid,
            "measure": measure.to_dict(), "emulate_bytes": emulate_bytes, **gpu_snapshot(d)}
