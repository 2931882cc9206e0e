"""One sweep session: the preamble every sweep shares, then a chooser picks the points and the executor runs them.

`run_sweep(grid, options, chooser, executor)` resolves the device(s) (this machine's, or the kinds a cluster
executor discovers) and the recipe for each, decides the compiled points' batch dimension (static or dynamic),
waits for orphaned workers of the database, opens the store and its environment rows and refuses a batch mode
that differs from the stored points'. Then the chooser (`Chooser`) runs: it starts the sweep's row
(`SweepSession.start`) and measures batches of jobs (`SweepSession.measure`) through the executor, whichever it is
(`vramfit.sweep.executors`: local, Ray), so every chooser runs on every executor. This process alone writes the
store; the sweep's row ends `done`, or `interrupted` (its workers killed) when anything escapes.

The choosers: `vramfit.sweep.whole_grid.GridChooser` (every point not yet measured),
`vramfit.sweep.adaptive.AdaptiveChooser` (the next point from the fit and the dry run so far),
`vramfit.sweep.boundary.BoundaryChooser` (the largest batch that fits, per shape).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vramfit.errors import VramfitError
from vramfit.measure.devices import DeviceFacts, resolve
from vramfit.recipe import Recipe
from vramfit.store import Store, device_key
from vramfit.sweep.dynamic import sweep_batch_dim
from vramfit.sweep.executors import Event, Executor, Job, LocalExecutor
from vramfit.sweep.grid import Grid
from vramfit.sweep.orphans import wait_for_orphans


@dataclass(frozen=True)
class SweepOptions:
    """Where and how a sweep runs: everything but its grid, its chooser and its executor."""

    db: str | Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N (a cluster executor: auto | cpu | cuda)
    gpu_indices: list[int] | None = None  # local GPUs measuring in parallel (--devices)
    emulate_bytes: int | None = None  # behave like a card this big
    redo: bool = False  # measure again points already in the store (the grid chooser)
    quiet: bool = False
    live: bool | None = None  # a progress bar (None: when stdout is a terminal)
    argv: list[str] | None = None  # the command line, kept in the sweep's row
    worker_cmd: list[str] | None = None  # the default executor's worker command (tests: a fake worker)
    log: Callable[[str], None] = print

    def say(self, line: str) -> None:
        """Print `line` unless quiet."""
        if not self.quiet:
            self.log(line)


@dataclass
class SweepResult:
    sweep_id: int
    db: str
    planned: int
    invalid: int
    resumed: int
    counts: Counter = field(default_factory=Counter)
    interrupted: bool = False
    note: str = ""  # adaptive plan: why it stopped
    boundaries: list = field(default_factory=list)  # boundary search: a BoundaryResult per shape
    sweep_ids: list = field(default_factory=list)  # every sweep row of the run (one per recipe of the grid)

    def __post_init__(self) -> None:
        self.sweep_ids = self.sweep_ids or [self.sweep_id]


class Chooser:
    """Picks the points a sweep measures (see the module docstring). `one_device`: the chooser measures one
    device's points one batch after another and names itself in the error for several ('an adaptive plan')."""

    one_device = ""

    def check(self, session: SweepSession) -> None:
        """Refuse before the store is opened (the devices are known, nothing is written yet)."""

    def run(self, session: SweepSession) -> None:
        """Start the sweep's row and measure the points chosen."""
        raise NotImplementedError


class SweepSession:
    """A sweep's shared state once `open` has run: `devices`, `recipes` (resolved per device), `grid` (its batch
    dimension decided), `batch_line`, `store`, `env_ids`; after `start`, `result`."""

    def __init__(self, grid: Grid, options: SweepOptions, executor: Executor | None = None) -> None:
        self.grid = grid
        self.options = options
        self.ex = executor or LocalExecutor(options.worker_cmd)
        self.devices: list[DeviceFacts] = []
        self.recipes: list[Recipe] = []
        self.batch_line: str | None = None
        self.store: Store | None = None
        self.env_ids: list[int] = []
        self.result: SweepResult | None = None
        self._actual: dict[str, int] = {}  # environments of devices a cluster ran points on
        self._events: Iterator[Event] | None = None  # the executor's run in progress

    # ------------------------------------------------------------------------------------------ the preamble
    def open(self, chooser: Chooser) -> None:
        """Devices, recipes, batch dimension, orphans, store, environments, batch mode (see the module docstring).
        Raises VramfitError before anything is written where the sweep cannot run."""
        o, ex = self.options, self.ex
        self.devices = resolve(o.device, o.gpu_indices) if ex.local else ex.discover(o.device, o.gpu_indices)
        if chooser.one_device and len(self.devices) > 1:
            hint = "give --device cuda:N instead of --devices" if ex.local else \
                f"the {ex.name} cluster offers {len(self.devices)} device kinds: give --device cpu or cuda"
            raise VramfitError(f"{chooser.one_device} runs on one device; {hint}")
        chooser.check(self)
        self.recipes = [d.resolve(self.grid.recipe) for d in self.devices]
        compiled = [(d.device_type, bool(r.compile)) for d, r in zip(self.devices, self.recipes, strict=True)]
        self.grid, self.batch_line = sweep_batch_dim(self.grid, compiled, ex.local)  # may refuse: before the store
        if ex.local:
            wait_for_orphans(o.db)
            ex.bind(str(o.db))
        self.store = Store(o.db)
        self.env_ids = [self.store.environment(d.to_dict(), r, o.emulate_bytes)
                        for d, r in zip(self.devices, self.recipes, strict=True)]
        check_batch_mode(self.store, self.env_ids, bool(self.grid.measure.dynamic_batch))

    @property
    def device(self) -> DeviceFacts:
        """The first (a one-device chooser's only) device."""
        return self.devices[0]

    def names(self) -> list[str]:
        """The devices as the sweep's row lists them."""
        if not self.ex.local:
            return [f"{self.ex.name}:{d.device_name}" for d in self.devices]
        return [f"{d.device_type}:{d.index}" if d.index is not None else d.device_type for d in self.devices]

    def start(self, planned: int, resumed: int, plan: object = None) -> SweepResult:
        """The sweep's row (status running): `planned` points to measure, `resumed` already measured; `plan`
        (the chooser's settings) is kept beside the grid."""
        o, grid = self.options, self.grid
        spec = grid.to_dict() if plan is None else {**grid.to_dict(), "plan": plan}
        n_invalid = grid.points()[1]
        sweep_id = self.store.start_sweep(grid.name, grid.path, spec, self.names(), o.emulate_bytes, planned,
                                          n_invalid, resumed, o.argv)
        self.result = SweepResult(sweep_id, str(o.db), planned, n_invalid, resumed)
        return self.result

    # ------------------------------------------------------------------------------------------ measuring
    def job(self, point: dict, slot: int = 0, extra: dict | None = None) -> Job:
        """A job for `point` on device `slot`'s group; `extra` goes into the stored record (why it was chosen)."""
        spec = {"point": point, "recipe": self.recipes[slot].to_dict(), "measure": self.grid.measure.to_dict(),
                "emulate_bytes": self.options.emulate_bytes}
        return Job(point, device_key(self.devices[slot].to_dict()), spec, dict(extra or {}))

    def measure(self, jobs: list[Job], skip_measured: bool = False) -> Iterator[Event]:
        """Run `jobs` through the executor, storing each record as it comes (its `point_id` set on the event);
        yields the executor's events (start, skip, done) and ends when every job is done or skipped.
        `skip_measured`: each point is claimed in the store before it runs (`Store.claim`), and one a concurrent
        sweep measured or is measuring is skipped (counted as resumed), so no point is measured twice."""
        if not jobs:
            return
        events = self._events = self.ex.run(jobs, self.devices, self.recipes, self.grid.measure,
                                            skip=self._measured_meanwhile if skip_measured else None)
        left = len(jobs)
        try:
            for ev in events:
                if ev.kind == "skip":
                    self.result.resumed += 1
                    left -= 1
                elif ev.kind == "done":
                    ev.record = {**ev.record, **ev.job.extra}
                    ev.point_id = self.store.insert_point(ev.record, self._env_of(ev), self.result.sweep_id)
                    if skip_measured:
                        self.store.release(self.env_ids[ev.slot], ev.job.point)  # its claim
                    self.result.counts[ev.record["status"]] += 1
                    left -= 1
                yield ev
                if left <= 0:
                    break
        finally:
            events.close()

    def measure_one(self, job: Job) -> Event:
        """Measure one job; its done event (record, point_id)."""
        return next(ev for ev in self.measure([job]) if ev.kind == "done")

    @contextlib.contextmanager
    def _measured_meanwhile(self):  # the calling thread's connection: claim each point, skip another sweep's
        own = Store(self.options.db)
        try:
            yield lambda i, p: not own.claim(self.env_ids[i], p)
        finally:
            own.close()

    def _env_of(self, ev: Event) -> int:
        """The environment a record belongs to: the planned device's, or the one a cluster says it ran on."""
        if ev.facts is None:
            return self.env_ids[ev.slot]
        key = json.dumps([ev.facts, ev.recipe], sort_keys=True, default=str)
        if key not in self._actual:
            recipe = Recipe.from_dict(ev.recipe) if ev.recipe else self.recipes[ev.slot]
            self._actual[key] = self.store.environment(ev.facts, recipe, self.options.emulate_bytes)
        return self._actual[key]

    def close(self, status: str) -> None:
        """End the sweep's row with `status` (when started), kill what still runs unless done, release all."""
        try:
            if status != "done":
                self.ex.kill_all()
            if self._events is not None:
                self._events.close()  # a local executor's threads stop taking points
            if self.store is not None:
                if self.result is not None:
                    self.store.finish_sweep(self.result.sweep_id, status)
                self.store.release()  # the claims of points started and not stored (interrupted)
                self.store.close()
        finally:
            self.ex.close()


def run_sweep(grid: Grid, options: SweepOptions, chooser: Chooser, executor: Executor | None = None) -> SweepResult:
    """Measure the points `chooser` picks from `grid` through `executor` (default: this machine's
    `LocalExecutor`); returns the counts (see the module docstring). Every chooser starts the sweep's row.
    A grid of several recipes is one session (one sweep row) per recipe, one after another; the result adds
    them up (`sweep_ids` lists the rows)."""
    if len(grid.recipes) == 1:
        return _run_session(grid, options, chooser, executor)
    total = None
    for one in grid.each_recipe():
        res = _run_session(one, options, chooser, executor)
        if total is None:
            total = res
            continue
        total.sweep_ids.append(res.sweep_id)
        total.planned, total.invalid, total.resumed = (total.planned + res.planned, total.invalid + res.invalid,
                                                       total.resumed + res.resumed)
        total.counts.update(res.counts)
        total.boundaries += res.boundaries
        total.note = "; ".join(n for n in (total.note, res.note) if n)
    return total


def _run_session(grid: Grid, options: SweepOptions, chooser: Chooser, executor: Executor | None) -> SweepResult:
    session = SweepSession(grid, options, executor)
    status = "interrupted"
    try:
        session.open(chooser)
        chooser.run(session)
        status = "done"
    finally:
        session.close(status)
    return session.result


# ---------------------------------------------------------------------------------------------- shared queries

def identity_points(store: Store, env_id: int) -> pd.DataFrame:
    """Every point measured on an environment with env_id's identity (device model, recipe, torch, emulation)."""
    dkey, rkey, tv, emu = store.identity(env_id)
    df = store.points_frame(recipe_key=rkey)
    same = (df["device_key"] == dkey) & (df["torch_version"].fillna("") == (tv or ""))
    same &= df["emulate_bytes"].isna() if emu is None else (df["emulate_bytes"] == emu)
    return df[same].reset_index(drop=True)


def check_batch_mode(store: Store, env_ids: list[int], dynamic: bool) -> None:
    """Refuse to add points measured with a dynamic (or static) batch dimension beside compiled points of the same
    device and recipe measured the other way: their readings may differ (on the CPU their RSS does), so one fit
    must not mix them, and a resume would otherwise skip the stored points as if they were measured as asked."""
    for env_id in dict.fromkeys(env_ids):
        df = identity_points(store, env_id)
        if df.empty:
            continue
        stored = {bool(e["dynamic_batch"]) for e in store.point_extras([int(i) for i in df["point_id"]]).values()
                  if e.get("dynamic_batch") is not None}
        other = stored - {bool(dynamic)}
        if other:
            was = "dynamic" if other.pop() else "static"
            raise VramfitError(f"this database holds compiled points of this device and recipe measured with a "
                               f"{was} batch dimension: rerun with --{was}-batch to resume or extend them, or use "
                               "another --db")


def capacity_bytes(d: DeviceFacts, emulate_bytes: int | None) -> int | None:
    """Bytes the plan must fit in: the emulated card, else a GPU's memory; None on a CPU without emulation."""
    if emulate_bytes:
        return int(emulate_bytes)
    return int(d.total_memory_bytes) if d.device_type == "cuda" and d.total_memory_bytes else None
