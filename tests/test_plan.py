"""Adaptive planning: D-optimal coverage, the stop rule, estimate-based filtering, boundary bisection.

Most tests drive the real planner and sweep loop with a fake worker whose memory is a known physics formula
(milliseconds per point); two run real CPU workers under `--emulate-vram` (about a minute together)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_workers import AXES, fake_cmd, formula

import vramfit.sweep.adaptive as sweep_mod
from vramfit.cli import main
from vramfit.shape import KEYS
from vramfit.store import Store
from vramfit.sweep.adaptive import AdaptiveChooser, AdaptivePlanner, PlanSettings, design_matrix, extremes
from vramfit.sweep.boundary import bisect_batch
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep


def grid(**overrides):
    return load_grid(None, {**AXES, **overrides}, measure_overrides={"timeout_s": 60})


def run_adaptive(db: Path, settings: PlanSettings, nonlinear: float = 0.0, executor=None, **options):
    """The adaptive chooser on `grid()` with the fake worker, on this CPU."""
    opts = SweepOptions(db, device="cpu", quiet=True, worker_cmd=fake_cmd(nonlinear), **options)
    return run_sweep(grid(), opts, AdaptiveChooser(settings), executor)


def plan_rows(db: Path) -> pd.DataFrame:
    with Store(db) as s:
        df = s.points_frame()
        extra = dict(s.conn.execute("SELECT point_id, extra FROM points").fetchall())
    df["extra"] = [json.loads(extra[i] or "{}") for i in df.point_id]
    return df


def test_coverage_first_then_d_optimal():
    pts = grid().points()[0]
    planner = AdaptivePlanner(pts, "tracked_bytes", PlanSettings(points=12))
    measured = pd.DataFrame(columns=[*KEYS, "status", "tracked_bytes"])
    reasons = []
    for _ in range(8):
        c = planner.next(measured)
        reasons.append(c.reason)
        row = {**c.point, "status": "ok", "tracked_bytes": formula(c.point)}
        measured = pd.concat([measured, pd.DataFrame([row])], ignore_index=True)
    chosen = measured[list(KEYS)].to_dict("records")
    assert extremes(chosen) >= extremes(pts)  # every axis' min and max measured
    assert reasons[0] == "coverage" and "d-optimal" in reasons
    k = reasons.index("d-optimal")
    assert all(r == "coverage" for r in reasons[:k]) and k <= 4
    X, _ = design_matrix(chosen, design_matrix(pts)[1])
    assert np.linalg.matrix_rank(X) == X.shape[1]  # the 6 coefficients are identifiable
    # the D-optimal points are better than a random design of the same size
    rng = np.random.default_rng(0)
    Xall, _ = design_matrix(pts)
    rand = [np.linalg.slogdet(Xall[rng.choice(len(pts), 8, replace=False)].T
                              @ Xall[rng.choice(len(pts), 8, replace=False)])[1] for _ in range(20)]
    assert np.linalg.slogdet(X.T @ X)[1] > np.median(rand)


@pytest.mark.parametrize("start", [1, 5, 37, 38, 39, 100, 500])
def test_bisect_batch_finds_the_edge_from_any_start(start):
    asked = []

    def fits(b):
        asked.append(b)
        return b <= 38

    best, probes = bisect_batch(fits, start, 1, 512)
    assert best == 38 and [p.batch_size for p in probes] == asked and len(set(asked)) == len(asked)
    assert any(p.batch_size == 38 and p.fits for p in probes) and any(p.batch_size == 39 and not p.fits
                                                                      for p in probes)
    if start in (38, 39):  # a correct prediction costs two runs
        assert len(probes) == 2
    assert len(probes) <= 2 * int(np.log2(512)) + 2


def test_bisect_batch_edges():
    assert bisect_batch(lambda b: False, 8, 1, 64)[0] == 0
    assert bisect_batch(lambda b: True, 8, 1, 64)[0] == 64
    best, probes = bisect_batch(lambda b: None if b > 8 else True, 8, 1, 64)  # an error stops the search
    assert best == 8 and probes[-1].status == "error"
    with pytest.raises(Exception, match="batch range"):
        bisect_batch(lambda b: True, 1, 5, 2)


def test_stop_rule_stops_early_when_predictions_hold(tmp_path):
    db = tmp_path / "db.sqlite"
    settings = PlanSettings(points=20, target_error=0.02)
    res = run_adaptive(db, settings)
    df = plan_rows(db)
    assert res.note.startswith("stopped: CV max error") and len(df) < 20
    # exact physics: stops once the model is identified (6 coefficients) and 3 predictions in a row held
    assert max(settings.min_points, settings.confirm + 3) <= len(df) <= 6 + settings.confirm
    last = df.tail(settings.confirm)
    pred = last.extra.map(lambda e: e["plan_predicted_bytes"])
    assert (abs(pred - last.tracked_bytes) / last.tracked_bytes <= 0.02).all()
    assert set(df.extra.map(lambda e: e["plan"])) == {"adaptive"}
    # a rerun resumes: the stored predictions satisfy the rule, nothing is measured again
    res2 = run_adaptive(db, settings)
    assert res2.resumed == len(df) and sum(res2.counts.values()) == 0 and "CV max error" in res2.note


def test_stop_rule_runs_to_the_budget_when_the_model_misses(tmp_path):
    db = tmp_path / "db.sqlite"
    res = run_adaptive(db, PlanSettings(points=9, target_error=0.001), nonlinear=3000.0)
    assert len(plan_rows(db)) == 9 and "--points" in res.note


def test_estimates_skip_points_that_cannot_fit_but_keep_a_few_at_the_edge(tmp_path, monkeypatch):
    pts = grid().points()[0]
    cap = int(np.median([formula(p) for p in pts]))
    calls = []

    def fake_estimates(points, recipe, d):
        calls.append(len(points))
        return {sweep_mod.point_key(p): 1.1 * formula(p) for p in points}, ""  # a 10 % pessimistic dry run

    monkeypatch.setattr(sweep_mod, "cached_estimates", fake_estimates)
    db = tmp_path / "db.sqlite"
    settings = PlanSettings(points=14, target_error=0.001, boundary=2, band=0.15)
    run_adaptive(db, settings, nonlinear=30.0, emulate_bytes=cap)  # a few % off the physics: runs to its budget
    df = plan_rows(db)
    assert calls == [settings.n_estimates] and len(df) == 14
    truth = np.array([formula(r) for r in df[list(KEYS)].to_dict("records")])
    assert (truth <= cap * 1.3).all()  # nothing far beyond the card
    near = np.abs(truth - cap) <= 0.2 * cap
    edge = df.extra.map(lambda e: e["plan_reason"] == "boundary").to_numpy() | (df.status == "oom").to_numpy()
    assert 1 <= edge.sum() <= 3 and near.sum() >= 1
    assert df.extra.map(lambda e: e.get("plan_feasibility_bytes") is not None).all()


def test_cli_bad_plan_inputs(capsys, tmp_path):
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "256",
            "--batch-size", "1,2", "--device", "cpu", "--db", str(tmp_path / "x.sqlite")]
    for args, msg in (
        (["--plan", "random"], "unknown --plan"),
        (["--plan", "adaptive", "--target-error", "2"], "--target-error must be in (0, 1)"),
        (["--plan", "adaptive", "--points", "0"], "--points must be >= 1"),
        (["--boundary"], "--boundary on the CPU needs --emulate-vram"),
    ):
        assert main(["sweep", *tiny, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------- real CPU workers

def vramfit(capsys, *args: str) -> str:
    """`vramfit ARGS` in this process (the sweep's workers and dry runs still get processes of their own): its
    stdout."""
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    return out


def test_boundary_search_on_real_cpu_runs_under_emulated_vram(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    args = ["sweep", "--boundary", "--device", "cpu", "--db", str(db), "--emulate-vram", "3M", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "256", "--batch-size", "1,64"]
    out = vramfit(capsys, *args)
    df = Store(db).points_frame().set_index("batch_size")
    best = int(re.search(r"largest batch (\d+) in ", out).group(1))
    assert 1 <= best < 64 and df.loc[best, "status"] == "ok" and df.loc[best + 1, "status"] == "oom"
    assert df.loc[best, "tracked_bytes"] <= 3 * 2**20
    assert len(df) <= 8 and "probes" in out
    # rerun: every probe is already in the store
    out = vramfit(capsys, *args)
    assert f"largest batch {best} " in out and "already measured" in out
    assert len(Store(db).points_frame()) == len(df)


def test_adaptive_on_real_cpu_runs_under_emulated_vram(tmp_path, capsys):
    """Real workers and real dry-run estimates: the plan stays within its budget, covers every axis, records
    OOM rows only near the edge, and the stop rule's numbers are in the output."""
    db = tmp_path / "db.sqlite"
    out = vramfit(capsys, "sweep", "--plan", "adaptive", "--points", "7", "--target-error", "0.05", "--device",
                  "cpu", "--db", str(db), "--emulate-vram", "6M", "--n-layer", "1,2", "--n-head", "2", "--n-embd",
                  "32,64", "--block-size", "32,64", "--batch-size", "1,4,16", "--vocab-size", "256,512")
    assert "dry-run estimates: 8/8 points" in out and "stopped:" in out
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT status, tracked_bytes, extra FROM points").fetchall()
    assert 1 <= len(rows) <= 7
    extras = [json.loads(e) for _, _, e in rows]
    assert all(e["plan"] == "adaptive" and e["plan_feasibility_bytes"] > 0 for e in extras)
    for (status, _, _), e in zip(rows, extras, strict=True):
        if status == "oom":  # only where the dry run said "near or below the edge"
            assert e["plan_feasibility_bytes"] <= 6 * 2**20 * 1.15
