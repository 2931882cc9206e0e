"""The throughput model: recovery of known coefficients, held-out accuracy on the CPU quick grid, JSON I/O."""

import json

import numpy as np
import pytest
from planner_data import synthetic_points

from vramfit.fit.memmodel import fit_points
from vramfit.fit.profile import Profile
from vramfit.fit.throughput import ThroughputModel, fit_throughput, time_features
from vramfit.store import Store

TRUE = (4.0, 2e-9, 3e-6, 5e-5)  # overhead ms, ms per FLOP, per token x vocab, per token x layer x channel


def timed_synthetic(noise: float = 0.0):
    df = synthetic_points()
    f = time_features(*(df[c] for c in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")))
    ms = TRUE[0] + TRUE[1] * f["flops"] + TRUE[2] * f["logits"] + TRUE[3] * f["acts"]
    rng = np.random.default_rng(0)
    return df.assign(ms_per_iter=ms * (1 + rng.normal(0, noise, len(df))), source="sweep")


def test_flops_follow_nanogpt_accounting():
    from gpt.config import GPTConfig

    mc = GPTConfig(4, 4, 256, 128, 512)
    f = time_features(4, 4, 256, 128, 8, 512)
    assert f["flops"][0] == pytest.approx(mc.flops_per_token() * 8 * 128)


def test_recovers_known_coefficients():
    tp = fit_throughput(timed_synthetic())
    assert tp.model.intercept_ == pytest.approx(TRUE[0], rel=1e-3)
    np.testing.assert_allclose(tp.model.coef_, TRUE[1:], rtol=1e-3)
    assert tp.metrics["ours"]["grouped"]["max_rel"] < 1e-3
    assert tp.metrics["flops"]["grouped"]["mape"] > tp.metrics["ours"]["grouped"]["mape"]


def test_saved_beside_the_memory_model_and_old_files_still_load(tmp_path):
    report = fit_points(timed_synthetic(noise=0.01), target="nvml")
    assert report.throughput is not None
    path = report.save(tmp_path / "m.json")
    doc = Profile.load(path)
    tp = doc.throughput.model
    f = time_features(4, 4, 256, 128, 8, 512)
    assert tp.predict(f)[0] == pytest.approx(report.throughput.model.predict(f)[0])
    d = json.loads(path.read_text())
    del d["throughput"]  # a file fitted before the throughput model existed
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = Profile.load(tmp_path / "old.json")
    from vramfit.fit.features import features

    assert old.throughput is None and old.model.predict(features(4, 4, 256, 128, 8, 512))[0] > 0


def test_fits_the_best_step_and_scales_by_the_typical_slowdown():
    """The target is each point's fastest timed step (timings.step_ms); slowdown = median typical/best."""
    df = timed_synthetic()
    best = df["ms_per_iter"].to_numpy()
    steps = [json.dumps({"step_ms": [b * 1.2, b, b * 1.1, b * 1.3]}) for b in best]
    df = df.assign(ms_per_iter=best * 1.15, timings=steps)
    tp = fit_throughput(df)
    np.testing.assert_allclose(tp.model.coef_, TRUE[1:], rtol=1e-3)  # the best steps, not the medians
    assert tp.model.slowdown == pytest.approx(1.15)
    f = time_features(4, 4, 256, 128, 8, 512)
    assert tp.model.predict(f)[0] == pytest.approx(1.15 * tp.model.predict_best(f)[0])
    assert tp.metrics["ours"]["grouped_typical"]["max_rel"] < 1e-3
    legacy = {k: v for k, v in tp.model.to_dict().items() if k not in ("slowdown", "delta")}
    assert ThroughputModel.from_dict(legacy).slowdown == 1.0  # files fitted before: ms/iter was the target


def test_points_without_their_steps_are_not_mixed_into_the_law():
    """Points swept before the steps were kept (median step, slower malloc) are left out once enough have them."""
    from vramfit.fit.throughput import timed_points

    df = timed_synthetic()
    best = df["ms_per_iter"].to_numpy()
    steps = [json.dumps({"step_ms": [b]}) for b in best]
    steps[:4] = [None] * 4  # four legacy points...
    df = df.assign(timings=steps, ms_per_iter=np.where(np.arange(len(df)) < 4, best * 1.6, best))
    assert len(timed_points(df)) == len(df) - 4
    tp = fit_throughput(df)
    np.testing.assert_allclose(tp.model.coef_, TRUE[1:], rtol=1e-3)  # ...do not bend the law
    assert fit_throughput(df.assign(timings=None)).n_points == len(df)  # all legacy: all used


def test_one_slow_point_does_not_bend_the_fit():
    """A point timed during a slow spell (35 % slow, as seen on the shared VM) is down-weighted (Huber)."""
    df = timed_synthetic()
    y = df["ms_per_iter"].to_numpy().copy()
    y[3] *= 1.35
    X = time_features(*(df[c] for c in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")))
    robust, plain = ThroughputModel().fit(X, y), ThroughputModel(delta=0).fit(X, y)
    clean = np.delete(np.arange(len(y)), 3)
    err = lambda m: np.abs(m.predict(X)[clean] / y[clean] - 1).max()  # noqa: E731
    assert err(robust) < 0.005 < err(plain)


def test_needs_timed_sweep_points():
    df = timed_synthetic()
    assert fit_throughput(df.head(2)) is None
    assert fit_throughput(df.assign(source="train")) is None  # train runs time a different loop


def test_held_out_shapes_on_the_cpu_quick_grid(quick_db):
    """The shape law on real CPU timings, fitted to each point's best of 10 timed steps. Measured on this 2-core VM
    (experiments/bench_throughput.py, 3 repeats): shape held out MAPE 0.6-2.0 %, max 1.7-6.0 %; FLOPs + overhead
    alone 5-9 %, max 15-28 %. One process timed during a slow spell can still cost one point ~25 %, and in the test
    suite the quick grid is timed beside the other xdist worker's tests (10.3 % in one such run, 2026-12-07), so this
    asserts a mean under 15 % and that the memory-traffic terms help."""
    with Store(quick_db) as store:
        points = store.points_frame()
    tp = fit_points(points, target="tracked").throughput
    ours, flops = tp.metrics["ours"]["grouped"], tp.metrics["flops"]["grouped"]
    print("throughput CV (shape held out):", ours, "FLOPs only:", flops)
    assert tp.n_points >= 11 and ours["n"] == tp.n_points
    assert ours["mape"] < 0.15, ours
    assert ours["mape"] <= flops["mape"] + 0.01
    from vramfit.fit.throughput import timed_points

    ok = timed_points(points)  # the slowdown is these points' median typical/best step (>= 1), not any number
    assert tp.model.slowdown == pytest.approx(max(1.0, float(np.median(ok["ms_per_iter"] / ok["ms_best"]))))
    assert tp.model.slowdown < 4  # typical wall step / best step's CPU time: what neighbours on a shared CPU cost
    assert tp.mfu is None  # no known peak for a CPU
    m = ThroughputModel.from_dict(tp.model.to_dict())
    assert np.allclose(m.coef_, tp.model.coef_)
