"""`vramfit sweep --executor ray` on a local Ray instance (CPU tasks): same rows as the local executor, for every
chooser (grid, adaptive, boundary); a dead Ray worker is an `error` row and the sweep completes. Skipped when Ray
(the `ray` extra) is not installed."""

import sys
import textwrap
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fake_workers import BOUNDARY_BEST, choose_all, fake_cmd  # noqa: E402

from vramfit.shape import KEYS  # noqa: E402
from vramfit.store import Store  # noqa: E402
from vramfit.sweep.executors.ray import RayExecutor  # noqa: E402
from vramfit.sweep.grid import load_grid  # noqa: E402
from vramfit.sweep.session import SweepOptions, run_sweep  # noqa: E402
from vramfit.sweep.whole_grid import GridChooser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "grids" / "quick.toml"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_quick_grid_gives_the_local_rows(local_ray, quick_db, tmp_path):
    """Three of the quick grid's points (the core shape, and one step in heads and in context length) through Ray:
    the rows the local executor stored for them in `quick_db`."""
    db = tmp_path / "ray.sqlite"
    grid = load_grid(QUICK, {"n_layer": [1], "n_embd": [128], "batch_size": [8], "vocab_size": [2048]})
    opts = SweepOptions(db, device="cpu", quiet=True)
    res = run_sweep(grid, opts, GridChooser(), RayExecutor())
    local = Store(quick_db).points_frame().set_index(list(KEYS)).sort_index()
    remote = Store(db).points_frame().set_index(list(KEYS)).sort_index()
    local = local.loc[remote.index]
    assert dict(res.counts) == {"ok": 3} and len(local) == 3
    assert list(remote.index) == list(local.index)
    assert (remote.status == "ok").all() and remote.stable.all()
    assert (remote.device_name == local.device_name).all() and (remote.recipe_key == local.recipe_key).all()
    assert (remote.tracked_bytes == local.tracked_bytes).all()  # the same worker: byte-identical tracked peaks
    # RSS: the project's tolerance for a reading that counts heap and library pages besides the tensors (as in
    # test_sweep: 3 % + 2 MiB); local points are forked from the fork server, Ray's are spawned
    gap = (remote.rss_bytes - local.rss_bytes).abs()
    assert (gap <= 0.03 * local.rss_bytes + 2 * 2**20).all(), (remote.rss_bytes / local.rss_bytes).to_string()
    assert Store(db).sweeps_frame().status.tolist() == ["done"]
    # resume works as with the local executor
    again = run_sweep(grid, opts, GridChooser(), RayExecutor())
    assert again.resumed == 3 and not again.counts


KILLER = textwrap.dedent("""
    import json, os, signal, sys
    spec = json.loads(sys.stdin.read())
    p = spec["point"]
    if p["batch_size"] == 2:
        os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker running this task dies
        os.kill(os.getpid(), signal.SIGKILL)
    if p["batch_size"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # the measuring process dies
    print(json.dumps({**p, "status": "ok", "tracked_bytes": 100 * p["batch_size"], "rss_bytes": 1, "iters": 3,
                      "stable": True}))
""")


def test_dead_ray_worker_is_an_error_row_and_the_sweep_completes(local_ray, tmp_path):
    grid = load_grid(None, {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8],
                            "batch_size": [1, 2, 3, 4]})
    db = tmp_path / "db.sqlite"
    res = run_sweep(grid, SweepOptions(db, device="cpu", quiet=True), GridChooser(),
                    RayExecutor(worker_cmd=[sys.executable, "-c", KILLER]))
    assert dict(res.counts) == {"ok": 2, "error": 2}
    df = Store(db).points_frame().set_index("batch_size")
    assert "ray task failed" in df.loc[2, "error"]
    assert "killed by SIGKILL" in df.loc[3, "error"]
    assert df.loc[4, "tracked_bytes"] == 400
    assert Store(db).sweeps_frame().status.tolist() == ["done"]


def test_adaptive_and_boundary_choose_and_store_on_ray_what_they_do_locally(local_ray, local_choices, tmp_path):
    """Every chooser runs on every executor: the adaptive plan and the boundary search (fake physics workers, one
    Ray task per point) pick the same points, in the same order, for the same reasons, and store the same rows
    as on this machine's executor."""
    on_ray = choose_all(tmp_path, lambda: RayExecutor(worker_cmd=fake_cmd()))
    assert on_ray == local_choices
    (adaptive, note), (boundary, found) = on_ray
    assert 6 <= len(adaptive) <= 12 and note.startswith("stopped: CV max error")
    assert {e["plan_reason"] for *_, e in adaptive} >= {"coverage", "d-optimal"}
    assert found == [BOUNDARY_BEST] and all(e == {"plan": "boundary", "boundary_start": e["boundary_start"]}
                                            for *_, e in boundary)


def test_cli_refuses_an_unknown_executor_and_an_address_without_ray(tmp_path):
    from vramfit.cli import main

    args = ["sweep", "--grid", str(QUICK), "--device", "cpu", "--db", str(tmp_path / "x.sqlite"), "--executor"]
    assert main([*args, "slurm"]) == 2
    assert main([*args, "local", "--address", "auto"]) == 2
    assert not (tmp_path / "x.sqlite").exists()
