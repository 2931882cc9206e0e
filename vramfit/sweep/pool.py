"""Worker processes: the environment a point is measured in, one fresh process per point, kill on interrupt.

A fresh process per point is either forked from the sweep's fork server (`vramfit.sweep.forkserver`: one zygote
per worker environment and thread, which imported torch once) or, where fork is not available or a custom worker
command is given, spawned (`python -m vramfit.measure.worker`, paying the import each time). Either way the worker
code, its record, the timeout and the death with the sweep are the same. A fork server that touched CUDA
(`vramfit.sweep.forkserver.fork_unsafe`, from the fork-safety test it runs at start) hands CUDA points to spawned
workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from vramfit.child import ChildResult, LiveChildren, run_json
from vramfit.measure.devices import PCI_ORDER, DeviceFacts
from vramfit.recipe import Recipe, with_alloc_conf
from vramfit.sweep.grid import Measure

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_CMD = [sys.executable, "-m", "vramfit.measure.worker"]
STDERR_TAIL = 800


def worker_env(facts: DeviceFacts, recipe: Recipe, measure: Measure) -> dict[str, str]:
    """The worker's environment: RSS that follows frees (glibc mmap threshold, no MKL buffer cache) and
    `measure.threads` threads on CPU; on CUDA the GPU by UUID (chosen among the GPUs the inherited
    CUDA_VISIBLE_DEVICES allows, see `devices.visible_devices`), CUDA_DEVICE_ORDER=PCI_BUS_ID (CUDA's ordinals in
    NVML's order) and the recipe's allocator settings in both of torch's variables (`recipe.with_alloc_conf`: the
    recipe is authoritative, an inherited value is removed). A CPU worker sees no GPU (CUDA_VISIBLE_DEVICES=''):
    on a GPU host, Dynamo and Inductor would otherwise initialise CUDA in it and NVML would count it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if facts.device_type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
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
        env = with_alloc_conf(env, recipe.alloc_conf)
    return env


OWNER_ENV, DRIVER_ENV = "VRAMFIT_SWEEP_DB", "VRAMFIT_SWEEP_PID"  # which database's sweep a worker measures for
CACHE_ENV = "VRAMFIT_COMPILE_CACHE"  # 1: share the per-sweep Inductor cache; 0: every cache off; unset: by device


def share_compile_cache(device: str) -> bool:
    """Whether a sweep's compiled points share one Inductor cache: yes on CUDA, where step 1 (compilation) is out of
    the peak and NVML counts the allocator and the context; no on the CPU, where the RSS after step 1 keeps what
    compiling left behind and so depends on the cache: small compiled points read 33-35 MB of RSS when the shared
    cache held part of their graphs against 6.8-9.2 MB with every cache off, with byte-identical tensor readings
    (results/bench/dynamic-batch-cpu.md, static arms). CACHE_ENV=1 or 0 overrides."""
    forced = os.environ.get(CACHE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return device.startswith("cuda")


def compile_cache_env(cache_dir: str | None) -> dict[str, str]:
    """Inductor's on-disk caches (FX graph, AOTAutograd, autotuning, Triton kernels) in one per-sweep directory,
    shared by the sweep's workers and by no other sweep; with `cache_dir` None (CACHE_ENV=0), every cache off.
    Only variables torch reads (the autotuning cache has no variable: `autotune_local_cache` is on by default and
    lives in TORCHINDUCTOR_CACHE_DIR)."""
    if cache_dir is None:
        return {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    return {"TORCHINDUCTOR_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton"),
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


class WorkerPool:
    """Runs worker processes (forked or spawned, see the module docstring) and remembers the live ones so that
    they can be killed on interrupt. `fork`: None = fork where possible with the default worker; False = spawn.
    `owner`: the database the sweep writes; its workers carry it (and the sweep's PID) in their environment, so
    that a later sweep of that database can find orphans (`vramfit.sweep.orphans`)."""

    def __init__(self, cmd: list[str] | None = None, fork: bool | None = None, owner: str | Path | None = None,
                 zygote_cmd: list[str] | None = None) -> None:
        from vramfit.sweep.forkserver import fork_available

        self.cmd = list(cmd or WORKER_CMD)
        self.zygote_cmd = zygote_cmd  # None: `python -m vramfit.measure.zygote`
        self.live = LiveChildren()
        self.owner = str(Path(owner).resolve()) if owner else None
        possible, why = fork_available()
        if cmd is not None and fork is None:
            possible, why = False, "a custom worker command"
        self.fork = possible and fork is not False
        self.why_spawn = "" if self.fork else (why or "asked for")
        self._servers: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()
        self._cache_dir: str | None = None  # created on first use, removed by close()

    def describe(self) -> str:
        """How points get their fresh process, in words (the sweep prints it)."""
        if self.fork:
            return "workers forked from a fork server (torch imported once per sweep)"
        return f"one spawned worker per point ({self.why_spawn})"

    def _cache(self, device: str) -> str | None:
        if not share_compile_cache(device):
            return None
        with self._lock:
            if self._cache_dir is None:
                import tempfile

                self._cache_dir = tempfile.mkdtemp(prefix="vramfit-inductor-")
            return self._cache_dir

    def _env(self, env: dict[str, str], device: str = "cpu") -> dict[str, str]:
        cache = self._cache(device)
        if cache is None:  # caches off: no inherited cache folder either (Inductor writes its default one into
            # os.environ once it has compiled in the parent, e.g. the dry run's compiled estimate)
            env = {k: v for k, v in env.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        env = {**env, **compile_cache_env(cache)}
        if self.owner:
            env = {**env, OWNER_ENV: self.owner, DRIVER_ENV: str(os.getpid())}
        return env

    def _server(self, env: dict[str, str]):
        """This thread's zygote for `env` (started, or restarted when it died)."""
        from vramfit.sweep.forkserver import ForkServer

        key = (hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest(), threading.get_ident())
        with self._lock:
            server = self._servers.get(key)
        if server is None or not server.alive:
            if server is not None:
                server.close()
            server = ForkServer(env, self.zygote_cmd)
            with self._lock:
                self._servers[key] = server
        return server

    def _run_child(self, spec: dict, env: dict[str, str], timeout: float) -> ChildResult:
        if self.fork:
            from vramfit.sweep.forkserver import ForkServerError, fork_unsafe

            try:
                server = self._server(env)
                why = fork_unsafe(server.info, str(spec.get("device") or "cpu"))
                if not why:
                    return server.run(spec, timeout)
            except ForkServerError as exc:
                return ChildResult(1, "", str(exc))
            self.fork, self.why_spawn = False, why  # this and every later point: spawned
        return run_json(self.cmd, spec, timeout, env=env, live=self.live)

    def run(self, spec: dict, env: dict[str, str], timeout: float) -> dict:
        """One point in one fresh process; always returns a record (ok | oom | error | timeout)."""
        spec = {**spec, "spawn_time": time.time()}
        point = spec["point"]
        res = self._run_child(spec, self._env(env, str(spec.get("device") or "cpu")), timeout)
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
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.kill_all()

    def close_thread(self) -> None:
        """Stop the fork servers this thread started (a thread that is done with its points)."""
        me = threading.get_ident()
        with self._lock:
            mine = [k for k in self._servers if k[1] == me]
            servers = [self._servers.pop(k) for k in mine]
        for server in servers:
            server.close()

    def close(self) -> None:
        """Stop the fork servers (each kills and reaps its children first); remove the compile cache."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
            cache, self._cache_dir = self._cache_dir, None
        for server in servers:
            server.close()
        if cache:
            import shutil

            shutil.rmtree(cache, ignore_errors=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gpu_snapshot(d: DeviceFacts) -> dict:
    """Taken just before a worker starts on `d`: device used bytes (the idle baseline, the fallback when the worker
    cannot find its own process in NVML) and the compute PIDs already there (so that the worker can recognise its
    own host PID in a container as the one new PID). Empty for a CPU."""
    if d.device_type != "cuda":
        return {}
    from vramfit.measure.probe import NvmlProbe

    return NvmlProbe(d.gpu_uuid, d.nvml_index if d.nvml_index is not None else d.index or 0).snapshot()



def point_spec(point: dict, recipe: Recipe, d: DeviceFacts, measure: Measure, emulate_bytes: int | None) -> dict:
    """The worker's input for one point on one device outside a sweep (a check, a test); a sweep's session builds
    the same through its executor (`vramfit.sweep.executors.complete_spec`)."""
    from vramfit.sweep.executors import complete_spec

    return complete_spec({"point": point, "recipe": recipe.to_dict(), "measure": measure.to_dict(),
                          "emulate_bytes": emulate_bytes}, d)
