"""Executors: where a sweep's points run. The sweep session (`vramfit.sweep.session`) and its chooser plan, an
executor runs, the session alone writes the store.

An executor takes `Job`s (one point, planned for one device group) and yields `Event`s as they happen:
`start`, `skip` (measured meanwhile by a concurrent sweep) and `done` with the worker's record and, when the
executor knows better than the plan, the device facts and resolved recipe the point actually ran with. Every
executor runs the same worker (`vramfit.measure.worker`, one fresh process per point), so the readings do not
depend on the executor.

- `LocalExecutor`: this machine's devices, one thread per device, each device of a group pulling from the group's
  queue; one device measures in the caller's thread, so that its fork server (which dies with the thread that
  started it) serves every batch of the sweep. Points are forked from a fork server where fork is available.
- `vramfit.sweep.executors.ray.RayExecutor`: one Ray task per point on a Ray cluster (`--executor ray`); each task
  spawns its own fresh worker.

A new backend (e.g. Slurm through submitit) implements `discover` (the device kinds it can run on, as
`DeviceFacts`), `run` and `kill_all`, and sets `local = False`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vramfit.errors import VramfitError
from vramfit.measure.devices import DeviceFacts

EXECUTORS = ("local", "ray")
# a context manager factory giving a check "is this point already measured on device slot i?" for one thread
SkipCheck = Callable[[], contextlib.AbstractContextManager[Callable[[int, dict], bool]]]


@dataclass
class Job:
    """One point to measure, planned for the device group `group` (devices interchangeable for memory)."""

    point: dict
    group: str
    spec: dict  # the worker spec without the device-specific fields (gpu_uuid, idle_baseline, pids_before)
    extra: dict = field(default_factory=dict)  # stored with the record: why the chooser picked the point


@dataclass
class Event:
    """What an executor reports: kind is start | skip | done; `slot` indexes the devices the sweep planned for."""

    kind: str
    job: Job
    slot: int
    record: dict | None = None
    facts: dict | None = None  # the device it actually ran on, when it may differ from the planned slot
    recipe: dict | None = None  # the recipe resolved for that device
    point_id: int | None = None  # the stored row (set by the sweep session)


def complete_spec(spec: dict, facts: DeviceFacts) -> dict:
    """The worker spec for `facts`: device, GPU UUID, and the idle baseline and compute PIDs taken just before the
    worker starts."""
    from vramfit.sweep.pool import gpu_snapshot

    return {**spec, "device": facts.torch_device, "gpu_uuid": facts.gpu_uuid, **gpu_snapshot(facts)}


class Executor:
    """The interface (see the module docstring)."""

    name = "base"
    local = False
    worker_mode = "spawn"  # how a point gets its fresh process: spawn | fork (the cost estimate's overhead)

    def discover(self, device: str, gpu_indices: list[int] | None) -> list[DeviceFacts]:
        """One DeviceFacts per device (local) or device kind (cluster) the sweep can run on."""
        raise NotImplementedError

    def run(self, jobs: list[Job], devices: list[DeviceFacts], recipes: list, measure, skip: SkipCheck | None = None,
            ) -> Iterator[Event]:
        """Run every job; yield events as they happen (the generator's close stops the rest)."""
        raise NotImplementedError

    def bind(self, db: str) -> None:
        """The database the sweep writes (a local executor's workers carry it, see `vramfit.sweep.orphans`)."""

    def describe(self) -> str:
        """How a point gets its fresh process, in words."""
        return "one fresh worker process per point"

    def kill_all(self) -> None:
        """Stop everything still running (on interrupt)."""

    def close(self) -> None:
        """Release what the executor holds (a cluster connection)."""


class LocalExecutor(Executor):
    """This machine: one thread per device (one device: the caller's thread); devices of one group share the
    group's queue of points."""

    name = "local"
    local = True

    def __init__(self, worker_cmd: list[str] | None = None, fork: bool | None = None) -> None:
        from vramfit.sweep.pool import WorkerPool

        self.pool = WorkerPool(worker_cmd, fork=fork)
        self.worker_mode = "fork" if self.pool.fork else "spawn"

    def bind(self, db: str) -> None:
        from pathlib import Path

        self.pool.owner = str(Path(db).resolve())

    def describe(self) -> str:
        return self.pool.describe()

    def discover(self, device: str, gpu_indices: list[int] | None) -> list[DeviceFacts]:
        from vramfit.measure.devices import resolve

        return resolve(device, gpu_indices)

    def run(self, jobs: list[Job], devices: list[DeviceFacts], recipes: list, measure, skip: SkipCheck | None = None,
            ) -> Iterator[Event]:
        from vramfit.store import device_key

        queues: dict[str, queue.Queue] = {}
        for job in jobs:
            queues.setdefault(job.group, queue.Queue()).put(job)
        stop = threading.Event()

        def lane(i: int) -> Iterator[Event]:  # device i takes points from its group's queue
            q = queues.get(device_key(devices[i].to_dict()))
            if q is not None:
                yield from self._lane(i, devices[i], recipes[i], measure, q, skip, stop)

        if len(devices) == 1:  # in this thread: its fork server lives as long as the executor
            yield from lane(0)
            return
        events: queue.Queue = queue.Queue()

        def work(i: int) -> None:
            try:
                for ev in lane(i):
                    events.put(ev)
            finally:
                self.pool.close_thread()  # this thread's fork server goes with it

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(devices))]
        for t in threads:
            t.start()
        try:
            while True:
                try:
                    yield events.get(timeout=0.5)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and events.empty():
                        return
        finally:
            stop.set()

    def _lane(self, i: int, d: DeviceFacts, recipe, measure, q: queue.Queue, skip: SkipCheck | None,
              stop: threading.Event) -> Iterator[Event]:
        """Device slot i's events: its points, one fresh worker each, until the queue is empty or `stop`."""
        from vramfit.sweep.pool import worker_env

        env = worker_env(d, recipe, measure)
        with skip() if skip is not None else contextlib.nullcontext(None) as measured:
            while not stop.is_set():
                try:
                    job = q.get_nowait()
                except queue.Empty:
                    break
                if measured is not None and measured(i, job.point):
                    yield Event("skip", job, i)
                    continue
                spec = complete_spec(job.spec, d)
                yield Event("start", job, i)
                try:
                    rec = self.pool.run(spec, env, measure.timeout_s)
                except Exception as exc:  # noqa: BLE001 - e.g. cannot spawn: record it and go on
                    rec = {**job.point, "status": "error", "error": f"cannot run worker: {exc}"}
                if not stop.is_set():
                    yield Event("done", job, i, rec)

    def kill_all(self) -> None:
        self.pool.kill_all()

    def close(self) -> None:
        self.pool.close()


def make_executor(name: str, address: str | None = None, worker_cmd: list[str] | None = None) -> Executor:
    """An executor by name (local | ray); ray is imported only when asked for."""
    if name == "local":
        if address:
            raise VramfitError("--address is for --executor ray")
        return LocalExecutor(worker_cmd)
    if name == "ray":
        from vramfit.sweep.executors.ray import RayExecutor

        return RayExecutor(address=address, worker_cmd=worker_cmd)
    raise VramfitError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")
