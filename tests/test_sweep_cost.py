"""What a sweep will cost before it starts (issue 17): the bench figures without a profile, the measured overhead
and the throughput model with one, and the sweep's first lines saying so."""

import json

import pandas as pd
import pytest

from vramfit.sweep.cost import (
    BENCH_OVERHEAD_S,
    BENCH_STARTUP_S,
    BENCH_STEPS_S,
    estimate_cost,
    format_duration,
    profile_costs,
)

SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 256}


def test_durations_in_words():
    assert [format_duration(s) for s in (4.4, 200, 7500, float("nan"))] == ["4 s", "3 min 20 s", "2 h 05 min",
                                                                             "unknown"]


@pytest.mark.parametrize("mode", ["spawn", "fork"])
def test_without_a_profile_the_bench_figures(mode):
    pts = [{**SHAPE, "batch_size": b} for b in range(10)]
    est = estimate_cost(pts, None, mode)
    assert est.points == 10 and "bench figures" in est.source
    assert est.seconds == pytest.approx(BENCH_STARTUP_S[mode] + 10 * (BENCH_OVERHEAD_S[mode] + BENCH_STEPS_S))
    assert estimate_cost(pts, None, mode, parallel=2).seconds < est.seconds
    assert estimate_cost([], None, mode).seconds == 0


def _profile(mode: str, n: int = 6) -> pd.DataFrame:
    """Points whose step costs 10 ms per batch row and whose wall is 2 s of overhead + 20 steps (fork: the first
    point also waited 5 s for the fork server)."""
    rows = []
    for i, b in enumerate(range(1, n + 1)):
        ms = 10.0 * b
        rest = 20 * ms / 1000
        start = 5.0 if (mode == "fork" and i == 0) else 0.01
        t = {"process_start": start, "import": 0.01 if mode == "fork" else 4.0, "iters": rest,
             "wall": start + 2.0 + rest, "step_ms": [ms] * 3}
        rows.append({**SHAPE, "batch_size": b, "status": "ok", "ms_per_iter": ms, "timings": json.dumps(t),
                     "source": "sweep", "device_name": "cpu"})
    return pd.DataFrame(rows)


def test_a_profile_gives_the_measured_overhead_and_steps():
    startup, overhead, steps = profile_costs(_profile("fork"), "fork")
    assert startup == pytest.approx(5.0) and overhead == pytest.approx(2.0, abs=0.02) and steps == pytest.approx(20)
    assert profile_costs(_profile("fork"), "spawn") is None  # forked points say nothing about spawned ones
    assert profile_costs(_profile("spawn", n=2), "spawn") is None  # too few
    pts = [{**SHAPE, "batch_size": b} for b in (1, 2)]
    est = estimate_cost(pts, _profile("spawn"), "spawn")
    assert "profile" in est.source
    # 2 points x 2 s + 20 steps x (10 + 20) ms, as the profile's points cost
    assert est.seconds == pytest.approx(2 * 2.0 + 20 * 0.030, rel=0.05)


def test_the_sweep_says_its_points_and_time_before_it_starts_and_adaptive_what_it_saved(tmp_path, capsys):
    from vramfit.cli import main

    db = tmp_path / "db.sqlite"
    axes = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "256"]

    def run(*args: str) -> str:  # in this process: the workers get processes of their own
        assert main(["sweep", "--device", "cpu", "--db", str(db), *axes, *args]) == 0
        return capsys.readouterr().out

    out = run("--batch-size", "1,2,3")
    assert "3 points, estimated " in out and "bench figures" in out
    out = run("--batch-size", "1,2,3,4,5,6,7,8", "--plan", "adaptive", "--points", "4")
    assert "at most 1 points, estimated " in out and "this device's profile" in out
    assert "measured 1 of 8 grid points in " in out and "the full grid would take ~" in out


def test_a_compiled_sweep_without_a_profile_says_its_compilation_is_not_counted():
    """The bench figures are eager points: a compiled recipe's estimate says what it leaves out, same seconds."""
    pts = [{"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": b, "vocab_size": 65}
           for b in (2, 4, 8)]
    eager, comp = estimate_cost(pts, None, "fork"), estimate_cost(pts, None, "fork", compiled=True)
    assert comp.seconds == eager.seconds and "torch.compile" in comp.line() and "torch.compile" not in eager.line()
