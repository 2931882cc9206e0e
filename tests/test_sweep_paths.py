"""The sweep's less travelled paths with fake workers (seconds, no training): --redo, an interrupt (Ctrl-C) in the
middle, and points a concurrent sweep measured meanwhile."""

import sqlite3
import sys
import textwrap

import pytest

from vramfit.cli import main
from vramfit.store import Store
from vramfit.sweep.executors import Event, LocalExecutor
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser

AXES = {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8], "batch_size": [1, 2, 3]}
OK_WORKER = textwrap.dedent("""
    import json, sys
    p = json.loads(sys.stdin.read())["point"]
    print(json.dumps({**p, "status": "ok", "tracked_bytes": 100 * p["batch_size"], "rss_bytes": 1, "iters": 3,
                      "stable": True}))
""")


def grid():
    return load_grid(None, AXES, measure_overrides={"timeout_s": 60})


def sweep(db, worker: str = OK_WORKER, *args: str, executor=None, **options):
    """The grid chooser on `grid()` with a fake worker (its source and argv)."""
    opts = SweepOptions(db, device="cpu", worker_cmd=[sys.executable, "-c", worker, *args], **options)
    return run_sweep(grid(), opts, GridChooser(), executor)


def test_redo_measures_every_point_again(tmp_path):
    db = tmp_path / "db.sqlite"
    first = sweep(db, quiet=True)
    assert (first.planned, first.resumed, dict(first.counts)) == (3, 0, {"ok": 3})
    again = sweep(db, quiet=True)
    assert (again.planned, again.resumed, dict(again.counts)) == (0, 3, {})
    redo = sweep(db, quiet=True, redo=True)
    assert (redo.planned, redo.resumed, dict(redo.counts)) == (3, 0, {"ok": 3})
    with Store(db) as s:
        df = s.points_frame()
        assert sorted(df.batch_size) == [1, 1, 2, 2, 3, 3]
        assert df.groupby("batch_size").sweep_id.apply(sorted).tolist() == [[first.sweep_id, redo.sweep_id]] * 3
        assert s.sweeps_frame().status.tolist() == ["done", "done", "done"]


class InterruptedExecutor(LocalExecutor):
    """Runs the first point, then the user presses Ctrl-C (KeyboardInterrupt in the sweep's event loop)."""

    def __init__(self) -> None:
        super().__init__([sys.executable, "-c", OK_WORKER])
        self.killed = self.closed = False

    def run(self, jobs, devices, recipes, measure, skip=None):
        first = jobs[0]
        yield Event("start", first, 0)
        yield Event("done", first, 0, {**first.point, "status": "ok", "tracked_bytes": 7, "rss_bytes": 7})
        yield Event("start", jobs[1], 0)
        raise KeyboardInterrupt

    def kill_all(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.closed = True


def test_an_interrupt_closes_the_sweep_as_interrupted_and_kills_the_workers(tmp_path):
    db = tmp_path / "db.sqlite"
    ex = InterruptedExecutor()
    with pytest.raises(KeyboardInterrupt):
        sweep(db, quiet=True, executor=ex)
    assert ex.killed and ex.closed
    with Store(db) as s:
        assert s.sweeps_frame().status.tolist() == ["interrupted"]
        df = s.points_frame()
        assert df.batch_size.tolist() == [1] and df.tracked_bytes.tolist() == [7]  # what finished is kept
    res = sweep(db, quiet=True)
    assert (res.resumed, res.planned, dict(res.counts)) == (1, 2, {"ok": 2})  # and the rest is resumed


def test_ctrl_c_on_the_command_line_exits_130_without_a_traceback(monkeypatch, capsys, tmp_path):
    """typer turns KeyboardInterrupt into exit code 130 itself (typer/core.py: `raise Exit(130)`), before
    vramfit.cli.main's own `except KeyboardInterrupt` could print its line."""
    import vramfit.sweep.session as session

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "run_sweep", interrupted)
    rc = main(["sweep", "--device", "cpu", "--db", str(tmp_path / "db.sqlite"),
               *[f"--{k.replace('_', '-')}={','.join(map(str, v))}" for k, v in AXES.items()]])
    out, err = capsys.readouterr()
    assert rc == 130 and "Traceback" not in err and "Traceback" not in out


# the first worker stores the second point itself, as another sweep on the same database would meanwhile
CONCURRENT_WORKER = textwrap.dedent("""
    import json, sqlite3, sys, time
    p = json.loads(sys.stdin.read())["point"]
    if p["batch_size"] == 1:
        c = sqlite3.connect(sys.argv[1], timeout=60)
        env = c.execute("SELECT env_id FROM environments").fetchone()[0]
        c.execute("INSERT INTO points (env_id, n_layer, n_head, n_embd, block_size, batch_size, vocab_size, status, "
                  "tracked_bytes, created_at) VALUES (?, 1, 1, 8, 8, 2, 8, 'ok', 999, 'now')", (env,))
        c.commit()
        c.close()
    print(json.dumps({**p, "status": "ok", "tracked_bytes": 100 * p["batch_size"], "rss_bytes": 1, "iters": 3,
                      "stable": True}))
""")


def test_points_a_concurrent_sweep_measured_meanwhile_are_skipped(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    res = sweep(db, CONCURRENT_WORKER, str(db), live=False)
    out = capsys.readouterr().out
    assert (res.planned, dict(res.counts), res.resumed) == (3, {"ok": 2}, 1)
    assert "B2 V8: skipped" in out
    with sqlite3.connect(db) as c:
        rows = sorted(c.execute("SELECT batch_size, tracked_bytes FROM points").fetchall())
    assert rows == [(1, 100), (2, 999), (3, 300)]  # measured once, by the other sweep


def test_redo_does_not_skip_what_a_concurrent_sweep_measured(tmp_path):
    db = tmp_path / "db.sqlite"
    res = sweep(db, CONCURRENT_WORKER, str(db), quiet=True, redo=True)
    assert (dict(res.counts), res.resumed) == ({"ok": 3}, 0)
