"""`vramfit sweep --executor ray`: one Ray task per point on a Ray cluster (optional extra: `pip install vramfit[ray]`).

- GPU clusters: each task asks for `num_gpus=1`; Ray sets CUDA_VISIBLE_DEVICES, and a GPU task's Ray worker is
  not reused. Inside the task the same worker as the local executor runs in a fresh subprocess
  (`python -m vramfit.measure.worker`), so a point's readings do not depend on the executor.
- A mixed cluster: the GPU kinds come from Ray's `accelerator_type:<kind>` node resources; every kind measures
  the whole grid (each point is pinned to its kind), and each record comes back with the facts of the GPU it
  actually ran on, so the store holds one profile per GPU kind.
- CPU-only clusters (and `--device cpu`): tasks ask for `num_cpus=1` instead (one point per core at a time).
- `max_retries=0`: a task whose Ray worker dies is recorded as `error` and the sweep goes on.
- Only the driver (the `vramfit sweep` process) writes the SQLite store.
Every node needs the same Python environment with vramfit installed (or a Ray `runtime_env`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from vramfit.errors import VramfitError
from vramfit.measure.devices import DeviceFacts
from vramfit.sweep.executors import Event, Executor, Job, SkipCheck

KIND_PREFIX = "accelerator_type:"


def import_ray():
    """The ray module, or one clear error when the optional extra is missing."""
    try:
        import ray
    except ImportError:
        raise VramfitError("--executor ray needs Ray: pip install 'vramfit[ray]' (or pip install 'ray>=2.9')") \
            from None
    return ray


def _local_facts(use_gpu: bool) -> dict:
    """Inside a task: the facts of the device Ray gave us (the first GPU of the task's CUDA_VISIBLE_DEVICES, read
    in PCI bus order like NVML's list, and identified by UUID from there on), or this CPU."""
    from vramfit.measure import devices

    if not use_gpu:
        return devices.cpu_facts().to_dict()
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus, note = devices.nvml_devices()  # NVML's GPUs, intersected with the visible set
    if not cvd or not gpus:
        raise RuntimeError(f"no GPU visible in this Ray task (CUDA_VISIBLE_DEVICES={cvd!r}, {note or 'no NVML'})")
    return gpus[0].to_dict()


def _probe(use_gpu: bool) -> dict:
    return _local_facts(use_gpu)


def _measure(spec: dict, measure: dict, timeout: float, use_gpu: bool, worker_cmd: list[str] | None) -> dict:
    """Inside a task: the recipe for the device we got (its kind's, as planned), then the worker in a fresh
    subprocess."""
    from vramfit.recipe import Recipe
    from vramfit.sweep.executors import complete_spec
    from vramfit.sweep.grid import Measure
    from vramfit.sweep.pool import WorkerPool, worker_env

    facts = DeviceFacts(**_local_facts(use_gpu))
    recipe = facts.resolve(Recipe.from_dict(spec["recipe"]))
    full = complete_spec({**spec, "recipe": recipe.to_dict()}, facts)
    env = worker_env(facts, recipe, Measure(**measure))
    with WorkerPool(worker_cmd, fork=False) as pool:  # a task's own fresh worker: no fork server in a Ray task
        rec = pool.run(full, env, timeout)
    rec["ray_node"] = facts.hostname
    return {"record": rec, "facts": facts.to_dict(), "recipe": recipe.to_dict()}


class RayExecutor(Executor):
    """Points as Ray tasks (see the module docstring). `address`: None/'auto' (a running cluster, else a local
    instance), 'ray://host:10001' (Ray Client), or 'local' (always a new local instance)."""

    name = "ray"
    local = False

    def __init__(self, address: str | None = None, worker_cmd: list[str] | None = None,
                 init_kwargs: dict | None = None) -> None:
        self.ray = import_ray()
        self.address = address
        self.worker_cmd = worker_cmd
        self.init_kwargs = init_kwargs or {}
        self.started = False  # whether we called ray.init (then we shut it down)
        self.use_gpu = False
        self.kinds: list[str | None] = []
        self.pending: dict = {}

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kw = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
        try:
            if self.address in (None, "local"):
                ray.init(**kw)
            else:
                ray.init(address=self.address, **kw)
        except Exception as exc:  # ConnectionError, ValueError for a bad address, ...
            raise VramfitError(f"cannot connect to Ray at {self.address or 'a new local instance'}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        self.started = True

    def _options(self, kind: str | None) -> dict:
        opts: dict = {"max_retries": 0}
        if self.use_gpu:
            opts.update(num_gpus=1, num_cpus=1, max_calls=1)  # a fresh Ray worker per GPU task
            if kind:
                opts["resources"] = {KIND_PREFIX + kind: 0.001}
        else:
            opts.update(num_cpus=1, num_gpus=0)
        return opts

    def discover(self, device: str, gpu_indices: list[int] | None) -> list[DeviceFacts]:
        """One DeviceFacts per GPU kind in the cluster (or one for the CPUs), probed by a task on that kind."""
        if gpu_indices:
            raise VramfitError("--devices picks local GPUs; with --executor ray every GPU of the cluster is used")
        if device not in ("auto", "cpu", "cuda"):
            raise VramfitError(f"--executor ray takes --device auto, cuda or cpu, not {device!r}")
        self._connect()
        res = self.ray.cluster_resources()
        n_gpus = res.get("GPU", 0)
        if device == "cuda" and not n_gpus:
            raise VramfitError("the Ray cluster has no GPUs; use --device cpu")
        self.use_gpu = device != "cpu" and n_gpus > 0
        kinds: list[str | None] = sorted(k[len(KIND_PREFIX):] for k in res if k.startswith(KIND_PREFIX))
        self.kinds = (kinds or [None]) if self.use_gpu else [None]
        probe = self.ray.remote(_probe)
        refs = [probe.options(**self._options(k)).remote(self.use_gpu) for k in self.kinds]
        try:
            facts = self.ray.get(refs, timeout=300)
        except Exception as exc:  # noqa: BLE001 - a probe that cannot run: one line
            raise VramfitError(f"cannot probe the Ray cluster's devices: {str(exc).splitlines()[0][:200]}") from None
        return [DeviceFacts(**f) for f in facts]

    def run(self, jobs: list[Job], devices: list[DeviceFacts], recipes: list, measure, skip: SkipCheck | None = None,
            ) -> Iterator[Event]:
        from vramfit.store import device_key

        slot_of = {device_key(d.to_dict()): i for i, d in enumerate(devices)}
        task = self.ray.remote(_measure)
        self.pending = {}
        for job in jobs:
            i = slot_of[job.group]
            ref = task.options(**self._options(self.kinds[i] if i < len(self.kinds) else None)).remote(
                job.spec, measure.to_dict(), measure.timeout_s, self.use_gpu,
                self.worker_cmd)
            self.pending[ref] = (job, i)
        try:
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    job, i = self.pending.pop(ref)
                    try:
                        out = self.ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the task (or its Ray worker) died: an error row
                        why = str(exc).strip().splitlines()
                        rec = {**job.point, "status": "error",
                               "error": f"ray task failed ({type(exc).__name__}): {why[0][:300] if why else ''}"}
                        yield Event("done", job, i, rec)
                        continue
                    yield Event("done", job, i, out["record"], out["facts"], out["recipe"])
        finally:
            self.kill_all()

    def kill_all(self) -> None:
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        self.pending = {}

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False
