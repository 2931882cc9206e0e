"""One sweep session, pluggable choosers: every chooser runs on every executor (here a cluster executor without Ray
that records what it was given; tests/test_ray.py does the same on Ray), with the preamble's refusals."""

import pytest
from fake_workers import AXES, BOUNDARY_BEST, choose_all, fake_cmd

from vramfit.errors import VramfitError
from vramfit.measure.devices import resolve
from vramfit.sweep.adaptive import AdaptiveChooser, PlanSettings
from vramfit.sweep.boundary import BoundaryChooser
from vramfit.sweep.executors import Event, Executor, complete_spec
from vramfit.sweep.grid import load_grid
from vramfit.sweep.pool import WorkerPool, worker_env
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser


class RecordingCluster(Executor):
    """A cluster of `kinds` CPU device kinds without Ray: each job runs the fake worker in a fresh process here and
    comes back with the facts of the device it ran on, as a Ray task's does; `given` records each batch of jobs."""

    name = "fake"
    local = False

    def __init__(self, kinds: int = 1) -> None:
        self.kinds = kinds
        self.given: list[list[dict]] = []
        self.pool = WorkerPool(fake_cmd(), fork=False)
        self.closed = False

    def discover(self, device, gpu_indices):
        return resolve("cpu", None) * self.kinds

    def run(self, jobs, devices, recipes, measure, skip=None):
        self.given.append([{**job.point, **job.extra} for job in jobs])
        for job in jobs:
            d, r = devices[0], recipes[0]
            rec = self.pool.run(complete_spec(job.spec, d), worker_env(d, r, measure), measure.timeout_s)
            yield Event("done", job, 0, rec, d.to_dict(), r.to_dict())

    def close(self) -> None:
        self.closed = True


def test_adaptive_and_boundary_run_on_a_cluster_executor_as_on_the_local_one(tmp_path, local_choices):
    clusters: list[RecordingCluster] = []

    def cluster() -> RecordingCluster:
        clusters.append(RecordingCluster())
        return clusters[-1]

    remote = choose_all(tmp_path, cluster)
    assert remote == local_choices
    (adaptive, note), (boundary, found) = remote
    assert found == [BOUNDARY_BEST] and note.startswith("stopped: CV max error")
    # the executors were given every point, one job at a time, with what the chooser stores beside it
    planned, probed = clusters
    assert all(len(batch) == 1 for batch in planned.given + probed.given)
    assert [b[0]["plan_reason"] for b in planned.given] == [e["plan_reason"] for *_, e in adaptive]
    assert [b[0]["batch_size"] for b in probed.given] == [r[4] for r in boundary]
    assert planned.closed and probed.closed


def test_a_one_device_chooser_refuses_several_devices_before_writing(tmp_path):
    db = tmp_path / "db.sqlite"
    grid = load_grid(None, AXES)
    for chooser, what in ((AdaptiveChooser(PlanSettings()), "an adaptive plan"),
                          (BoundaryChooser(), "a boundary search")):
        ex = RecordingCluster(kinds=2)
        with pytest.raises(VramfitError, match=f"{what} runs on one device; the fake cluster offers 2 device kinds"):
            run_sweep(grid, SweepOptions(db, device="cpu", emulate_bytes=2**30), chooser, ex)
        assert ex.closed and not ex.given
    with pytest.raises(VramfitError, match="--boundary on the CPU needs --emulate-vram"):
        run_sweep(grid, SweepOptions(db, device="cpu"), BoundaryChooser(), RecordingCluster())
    assert not db.exists()


def test_the_grid_chooser_on_a_cluster_stores_each_point_once_with_the_facts_it_ran_with(tmp_path):
    from vramfit.store import Store

    db = tmp_path / "db.sqlite"
    grid = load_grid(None, {**AXES, "n_layer": [1], "n_head": [2], "n_embd": [64], "block_size": [32]})
    ex = RecordingCluster()
    lines: list[str] = []
    res = run_sweep(grid, SweepOptions(db, device="cpu", log=lines.append, live=False), GridChooser(), ex)
    assert dict(res.counts) == {"ok": 8} and len(ex.given) == 1 and len(ex.given[0]) == 8  # one batch: the grid
    assert "(executor fake): 8 points to measure" in lines[0]
    with Store(db) as s:
        assert len(s.points_frame()) == 8 and s.sweeps_frame().devices.iloc[0].startswith("fake:")


def test_no_function_of_the_sweep_or_the_measurement_takes_more_than_ten_parameters():
    """Issue 27: a typed options object (`SweepOptions`, `PlanSettings`, `Measure`) instead of long signatures."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vramfit"
    long = []
    for path in sorted([*(root / "sweep").rglob("*.py"), *(root / "measure").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
                if len([n for n in names if n not in ("self", "cls")]) > 10:
                    long.append(f"{path.relative_to(root)}:{node.name}")
    assert long == []
