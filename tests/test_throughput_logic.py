"""The throughput model's pieces on small data (milliseconds each): FLOPs accounting, the best-step target and
which points feed it, the slowdown, the Huber fit, JSON, the device peak."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from vramfit.fit.throughput import (
    FLOPS,
    HUBER_DELTA,
    MIN_POINTS,
    RECIPE_THROUGHPUT,
    THROUGHPUT,
    ThroughputModel,
    _held_out_slowdown,
    _slowdown,
    best_step_ms,
    device_peak_flops,
    fit_throughput,
    frame_time_features,
    load_throughput,
    predict_ms,
    time_features,
    timed_points,
)

TRUE = (4.0, 2e-9, 3e-6, 5e-5)  # overhead ms, ms per FLOP, per token x vocab, per token x layer x channel
SHAPES = [(L, C // 64, C, T, B, V) for L, C, T, B, V in
          [(2, 128, 64, 4, 512), (2, 256, 128, 8, 8192), (4, 128, 128, 16, 512), (4, 256, 64, 2, 8192),
           (8, 512, 64, 4, 512), (8, 128, 128, 1, 8192), (2, 512, 128, 16, 512), (4, 512, 64, 8, 8192)]]
COLS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")


def true_ms(f) -> np.ndarray:
    return TRUE[0] + TRUE[1] * f["flops"] + TRUE[2] * f["logits"] + TRUE[3] * f["acts"]


def points(slow: float = 1.0, steps: bool = True, device: str = "cpu: Test") -> pd.DataFrame:
    """Eight sweep points; typical step = slow x best; each point's steps listed unless steps=False."""
    df = pd.DataFrame(SHAPES, columns=COLS)
    best = true_ms(frame_time_features(df)).to_numpy()
    timings = [json.dumps({"step_ms": [b * 1.3, b, b * 1.1]}) if steps else None for b in best]
    return df.assign(status="ok", source="sweep", ms_per_iter=best * slow, timings=timings, device_name=device)


def test_time_features_by_hand():
    f = time_features(2, 4, 64, 32, 3, 100, bias=False)
    N, L, C, T = 96, 2, 64, 32
    P_nonemb = 100 * 64 + 2 * (2 * 64 + 12 * 64 * 64) + 64  # tied head, no position embedding, no biases
    assert f["flops"][0] == 6 * P_nonemb * N + 12 * L * C * T * N
    assert (f["logits"][0], f["acts"][0], f["tokens"][0]) == (N * 100, N * L * C, N)
    assert f["params"][0] == P_nonemb + T * C
    assert time_features(2, 4, 64, 32, 3, 100)["params"][0] > f["params"][0]  # biases by default
    df = pd.DataFrame([SHAPES[0], SHAPES[1]], columns=COLS, index=[7, 9])
    ff = frame_time_features(df)
    assert list(ff.index) == [7, 9] and ff["flops"].iloc[1] == time_features(*SHAPES[1])["flops"][0]


@pytest.mark.parametrize("ratios, expected", [([1.2, 1.4, 3.0], 1.4), ([1.1, 1.3], 1.2), ([0.5, 0.8], 1.0),
                                              ([1.0], 1.0), ([0.9, 5.0, 5.0], 5.0)])
def test_slowdown_is_the_median_ratio_never_below_one(ratios, expected):
    assert _slowdown(np.array(ratios)) == pytest.approx(expected)


def test_held_out_slowdown_leaves_the_point_or_its_group_out():
    best, typical = np.ones(4), np.array([1.1, 1.2, 1.6, 2.0])
    assert _held_out_slowdown(best, typical, None).tolist() == pytest.approx([1.6, 1.6, 1.2, 1.2])
    groups = np.array(["a", "a", "b", "b"])
    assert _held_out_slowdown(best, typical, groups).tolist() == pytest.approx([1.8, 1.8, 1.15, 1.15])
    assert _held_out_slowdown(np.ones(1), np.array([1.5]), None).tolist() == [1.0]  # nothing else: 1


@pytest.mark.parametrize("timings, expected", [
    (json.dumps({"step_ms": [3.0, 2.0, 4.0]}), 2.0), ({"step_ms": [5, 6]}, 5.0), ({"step_ms": []}, math.nan),
    (json.dumps({"import": 1.0}), math.nan), (None, math.nan), ("{not json", math.nan), ({"step_ms": None}, math.nan),
    (float("nan"), math.nan),
])
def test_best_step_ms(timings, expected):
    got = best_step_ms(timings)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_timed_points_keep_ok_sweep_points_with_a_time():
    df = points()
    df.loc[0, "status"] = "oom"
    df.loc[1, "ms_per_iter"] = np.nan
    df.loc[2, "ms_per_iter"] = 0.0
    df.loc[3, "source"] = "train"
    df.loc[4, "source"] = None  # databases from before `source`: sweep points
    ok = timed_points(df)
    assert ok["n_layer"].tolist() == [df.loc[i, "n_layer"] for i in (4, 5, 6, 7)] and list(ok.index) == [0, 1, 2, 3]
    best = [json.loads(df.loc[i, "timings"])["step_ms"][1] for i in (4, 5, 6, 7)]
    assert ok["ms_best"].tolist() == pytest.approx(best)
    assert len(timed_points(df.drop(columns=["source"]))) == 5  # no source column: the train row counts too


def test_best_step_never_above_the_typical_step_and_legacy_points():
    df = points(slow=1.2)
    df.loc[0, "timings"] = json.dumps({"step_ms": [df.loc[0, "ms_per_iter"] * 2]})  # slower than its median?
    assert timed_points(df)["ms_best"].iloc[0] == df.loc[0, "ms_per_iter"]  # capped at ms/iter
    legacy = points(slow=1.2, steps=False)
    assert timed_points(legacy)["ms_best"].tolist() == legacy["ms_per_iter"].tolist()
    assert timed_points(legacy.drop(columns=["timings"]))["ms_best"].tolist() == legacy["ms_per_iter"].tolist()
    mixed = points(slow=1.2)
    mixed.loc[:4, "timings"] = None  # 5 legacy, 3 with steps: 3 >= MIN_POINTS, so only those
    assert MIN_POINTS == 3 and len(timed_points(mixed)) == 3
    mixed.loc[5, "timings"] = None  # 2 with steps: too few to stand alone, all 8 are used
    t = timed_points(mixed)
    assert len(t) == 8 and t["ms_best"].iloc[7] < t["ms_per_iter"].iloc[7] and t["ms_best"].iloc[0] == \
        t["ms_per_iter"].iloc[0]


def test_fit_recovers_the_law_and_the_slowdown():
    df = points(slow=1.25)
    tp = fit_throughput(df)
    assert tp.n_points == 8 and tp.model.features == THROUGHPUT and tp.baseline.features == FLOPS
    assert tp.model.intercept_ == pytest.approx(TRUE[0], rel=1e-4)
    np.testing.assert_allclose(tp.model.coef_, TRUE[1:], rtol=1e-4)
    assert tp.model.slowdown == pytest.approx(1.25)
    f = time_features(4, 4, 256, 128, 8, 512)
    assert tp.model.predict(f)[0] == pytest.approx(1.25 * true_ms(f)[0], rel=1e-4)
    assert predict_ms(tp.model, 4, 4, 256, 128, 8, 512)[0] == pytest.approx(tp.model.predict(f)[0])
    m = tp.metrics
    assert m["ours"]["loo"]["max_rel"] < 1e-3 and m["ours"]["grouped"]["max_rel"] < 1e-3
    assert m["ours"]["grouped_typical"]["max_rel"] < 1e-3 and m["ours"]["train"]["max_rel"] < 1e-4
    assert m["flops"]["train"]["mape"] > 10 * m["ours"]["train"]["mape"]
    assert set(tp.cv.columns) >= {"measured", "typical", "shape", "flops", "ours_loo", "ours_grouped", "flops_loo"}
    assert tp.peak_flops is None and tp.mfu is None
    assert fit_throughput(df.head(MIN_POINTS - 1)) is None and fit_throughput(df.head(MIN_POINTS)) is not None


def test_mfu_where_the_peak_is_known():
    df = points(slow=1.0, device="NVIDIA H100 80GB HBM3")
    tp = fit_throughput(df)
    X = frame_time_features(df)
    assert tp.peak_flops == 989e12
    assert tp.mfu == pytest.approx(float(np.median(X["flops"] / (df["ms_per_iter"] / 1000) / 989e12)))


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
                                        ("NVIDIA A10", 125e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
                                        ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA GeForce RTX 4090", 165e12),
                                        ("cpu: AMD EPYC", None), ("", None),
                                        # a name containing a known one is another GPU (a substring used to match)
                                        ("NVIDIA H100 PCIe", 756e12), ("NVIDIA RTX A1000", None), ("NVIDIA A10G", None),
                                        ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA L40", None)])
def test_device_peak_flops(name, peak):
    """Matched by the whole model name (gpt.config.gpu_model), the same in the trainer's MFU and the fit's."""
    from gpt.config import peak_flops_of

    assert device_peak_flops(name) == peak == peak_flops_of(name)


def test_huber_fit_shrugs_off_one_slow_point():
    import itertools

    df = pd.DataFrame([(L, C // 64, C, T, B, V) for L, C, T, B, V in itertools.product(
        [2, 4, 8], [128, 256, 512], [64, 128], [2, 8], [512, 8192])], columns=COLS)
    X = frame_time_features(df)
    y = true_ms(X).to_numpy().copy()
    y[2] *= 1.4
    robust, plain = ThroughputModel().fit(X, y), ThroughputModel(delta=0).fit(X, y)
    clean = np.delete(np.arange(len(y)), 2)
    err = lambda m: np.abs(m.predict(X)[clean] / y[clean] - 1).max()  # noqa: E731
    assert err(robust) < 0.01 < err(plain)
    assert robust.slowdown == 1.0 and plain.delta == 0


def test_predict_ms_is_never_below_a_microsecond():
    zero = ThroughputModel.from_dict({"features": ["flops"], "intercept": 0.0, "coef": [0.0]})
    assert predict_ms(zero, 1, 1, 8, 8, 1, 8).tolist() == [1e-3]


def test_coefficients_are_in_readable_units():
    m = ThroughputModel.from_dict({"features": list(THROUGHPUT), "intercept": 4.0, "coef": list(TRUE[1:]),
                                   "slowdown": 1.3})
    rows = {r["term"]: (r["value"], r["unit"]) for r in m.coefficients()}
    assert rows["overhead"] == (4.0, "ms/iter") and rows["slowdown"] == (1.3, "typical / best step")
    assert rows["flops"] == (pytest.approx(2e-9 * 1e12), "ms per TFLOP")
    assert rows["logits"] == (pytest.approx(3.0), "ms per 1e6 token x vocab")
    assert rows["acts"] == (pytest.approx(50.0), "ms per 1e6 token x layer x channel")


def test_json_round_trip_and_old_files():
    tp = fit_throughput(points(slow=1.1))
    d = json.loads(json.dumps(tp.to_json()))
    assert d["n_points"] == 8 and d["mfu"] is None and d["model"]["delta"] == HUBER_DELTA
    back = load_throughput(d)
    f = time_features(4, 4, 256, 128, 8, 512)
    assert back.model.predict(f)[0] == pytest.approx(tp.model.predict(f)[0], rel=1e-12)
    assert back.baseline.features == FLOPS and back.n_points == 8 and back.metrics == d["metrics"]
    assert load_throughput(None) is None and load_throughput({}) is None
    no_delta = {k: v for k, v in d["model"].items() if k != "delta"}
    assert ThroughputModel.from_dict(no_delta).delta == HUBER_DELTA  # files from before the Huber fit
    assert ThroughputModel.from_dict({**d["model"], "delta": None}).delta == 0.0
    assert ThroughputModel.from_dict({**d["model"], "delta": 0.2}).delta == 0.2
    assert ThroughputModel.from_dict(no_delta | {"slowdown": 2.0}).slowdown == 2.0


# ------------------------------------------------------------------------------------------------ edges mutmut found


def noisy_grid():
    import itertools

    df = pd.DataFrame([(L, C // 64, C, T, B, V) for L, C, T, B, V in itertools.product(
        [2, 4, 8], [128, 256, 512], [64, 128], [2, 8], [512, 8192])], columns=COLS)
    X = frame_time_features(df)
    y = true_ms(X).to_numpy().copy()
    rng = np.random.default_rng(1)
    y *= 1 + rng.normal(0, 0.03, len(y))
    y[2] *= 1.4
    y[7] *= 1.2
    return X, y


@pytest.mark.parametrize("delta", [0.0, HUBER_DELTA, 0.01])
def test_the_fit_is_the_least_squares_or_huber_estimate_of_relative_error(delta):
    """IRLS against an independent solver (scipy's least_squares, bounded, on the relative residuals): the plain
    fit (delta 0) is relative least squares, the Huber fit is the Huber M-estimate with that delta."""
    from scipy.optimize import least_squares

    X, y = noisy_grid()
    A = np.column_stack([X[f] for f in THROUGHPUT])
    scale = A.max(axis=0)
    sol = least_squares(lambda p: (p[0] + (A / scale) @ p[1:]) / y - 1, np.ones(4), bounds=(0, np.inf),
                        loss="huber" if delta else "linear", f_scale=delta or 1.0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    m = ThroughputModel(delta=delta).fit(X, y)
    assert m.intercept_ == pytest.approx(sol.x[0], rel=1e-4)
    np.testing.assert_allclose(m.coef_, sol.x[1:] / scale, rtol=1e-4)


def test_flops_count_the_biases_by_default():
    assert time_features(2, 4, 64, 32, 3, 100)["flops"][0] > time_features(2, 4, 64, 32, 3, 100, bias=False)["flops"][0]


def test_sub_millisecond_steps_are_real_steps():
    """A GPU step of 0.5 ms is a time like any other: it is the best step, not 'missing'."""
    df = points()
    df.loc[0, "ms_per_iter"] = 0.8
    df.loc[0, "timings"] = json.dumps({"step_ms": [0.9, 0.5]})
    t = timed_points(df)
    assert len(t) == 8 and t["ms_best"].iloc[0] == 0.5
    df.loc[1, "timings"] = json.dumps({"step_ms": [0.0]})  # a zero is not a time: a point without its steps,
    assert len(timed_points(df)) == 7  # left out while enough others have theirs
    few = points(steps=False)
    few.loc[0, "timings"] = json.dumps({"step_ms": [0.0]})
    few.loc[1, "timings"] = json.dumps({"step_ms": [0.5]})  # too few with steps to stand alone: all are used,
    t = timed_points(few)
    assert len(t) == 8 and t["ms_best"].iloc[0] == few.loc[0, "ms_per_iter"]  # and a zero is replaced by ms/iter
    assert t["ms_best"].iloc[1] == 0.5


def test_timed_points_add_only_ms_best():
    df = points().set_axis(range(10, 18))
    mixed = df.copy()
    mixed.loc[10:14, "timings"] = None
    for frame in (df, mixed):
        t = timed_points(frame)
        assert list(t.columns) == [*frame.columns, "ms_best"] and list(t.index) == list(range(len(t)))


def test_grouped_cv_holds_shapes_out_and_uses_their_own_slowdown():
    df = points(slow=1.0)
    df = pd.concat([df, df.assign(batch_size=df.batch_size * 2)], ignore_index=True)  # two points per shape
    X = frame_time_features(df)
    best = true_ms(X).to_numpy() * (1 + 0.02 * np.sin(np.arange(len(df))))  # not exactly the law
    ratio = 1.0 + 0.02 * np.arange(len(df))  # every point its own typical/best
    df = df.assign(ms_per_iter=best * ratio, timings=[json.dumps({"step_ms": [b]}) for b in best])
    tp = fit_throughput(df)
    m = tp.metrics["ours"]
    assert m["grouped"]["n"] == m["loo"]["n"] == 16 and m["grouped"] != m["loo"]
    from vramfit.fit.features import shape_key
    from vramfit.fit.stats import cv_predictions, error_metrics

    groups = shape_key(df).to_numpy()
    pred = cv_predictions(lambda: ThroughputModel(THROUGHPUT), X, best, groups)
    assert tp.cv["ours_grouped"].to_numpy() == pytest.approx(pred)
    expected = error_metrics(best * ratio, pred * _held_out_slowdown(best, best * ratio, groups))
    assert m["grouped_typical"] == pytest.approx(expected)
    loo_slowdown = error_metrics(best * ratio, pred * _held_out_slowdown(best, best * ratio, None))
    assert m["grouped_typical"]["mape"] != pytest.approx(loo_slowdown["mape"])  # the group's, not the point's
    two = df[df.n_layer.isin([2]) & (df.n_embd.isin([128, 256]))]  # exactly two shapes: still grouped
    assert shape_key(two).nunique() == 2
    t2 = fit_throughput(two).metrics["ours"]
    assert t2["grouped"] != t2["loo"]
    one = df[(df.n_layer == 2) & (df.n_embd == 128)]
    one = pd.concat([one, one.assign(batch_size=one.batch_size * 3)], ignore_index=True)
    t1 = fit_throughput(one).metrics["ours"]
    assert t1["grouped"] == t1["loo"]  # one shape: leave-one-out


def test_fit_throughput_without_device_names():
    tp = fit_throughput(points().drop(columns=["device_name"]))
    assert tp.peak_flops is None and tp.mfu is None and tp.n_points == 8


def test_report_json_keys_and_old_entries():
    tp = fit_throughput(points(device="NVIDIA H100 80GB HBM3"))
    d = tp.to_json()
    assert set(d) == {"model", "baseline", "coefficients", "metrics", "n_points", "peak_flops", "mfu"}
    assert d["coefficients"] == tp.model.coefficients() and d["peak_flops"] == 989e12 and d["mfu"] == tp.mfu
    back = load_throughput(d)
    assert (back.peak_flops, back.mfu, back.n_points) == (989e12, tp.mfu, 8)
    bare = load_throughput({"model": d["model"], "baseline": d["baseline"]})
    assert (bare.metrics, bare.n_points, bare.peak_flops, bare.mfu) == ({}, 0, None, None)
    legacy = {k: v for k, v in d["model"].items() if k not in ("slowdown", "delta")}
    assert ThroughputModel.from_dict(legacy).slowdown == 1.0


# ------------------------------------------------------------------------------------------------ recipe switches


def test_switch_terms_are_per_optimizer_step():
    """grad_accum micro-steps each run the plain step's terms and an overhead; every checkpointed block's forward
    runs once more (its weights' 24 C^2 and attention's 4 C T FLOPs per token, its N*C elementwise work); the
    optimizer step costs per parameter of its kind."""
    L, H, C, T, B, V = 5, 2, 16, 12, 3, 40
    sw = {"grad_accum": [1, 2, 4], "checkpoint_every": [0, 1, 2], "optimizer": ["fused", "sgd", "muon"]}
    f = time_features([L] * 3, H, C, T, B, V, switches=sw)
    plain = time_features(L, H, C, T, B, V)
    N, P, ckpt = B * T, plain["params"][0], np.array([0, 5, 3])
    accum = np.array([1.0, 2.0, 4.0])
    for k in ("flops", "logits", "acts"):
        assert f[k].tolist() == (accum * plain[k][0]).tolist()
    assert f["tokens"].tolist() == [N] * 3 and f["params"].tolist() == [P] * 3
    assert f["recompute"].tolist() == (accum * ckpt * N * (24 * C * C + 4 * C * T)).tolist()
    assert f["recompute_acts"].tolist() == (accum * ckpt * N * C).tolist() and f["micro"].tolist() == accum.tolist()
    assert f["opt_fused"].tolist() == [P, 0, 0] and f["opt_sgd"].tolist() == [0, P, 0]
    assert f["opt_muon"].tolist() == [0, 0, P] and f["opt_loop"].tolist() == [0, 0, 0]
    assert set(f) == {*RECIPE_THROUGHPUT, "tokens", "params"}
    one = time_features([L, L], H, C, T, B, V, switches={"grad_accum": 3, "checkpoint_every": 4, "optimizer": "sgd"})
    assert one["micro"].tolist() == [3, 3] and one["recompute_acts"].tolist() == [3 * 2 * N * C] * 2  # blocks 0, 4
    assert one["opt_sgd"].tolist() == [P, P] and all(v.dtype == np.float64 for k, v in one.items())


def recipe_points(slow: float = 1.0) -> pd.DataFrame:
    """Sixteen points (each shape twice) under eight recipes (auto and sgd optimizers, accumulation,
    checkpointing), timed by a law with a per-micro-step overhead, a recompute cost, a dispatch cost per block
    and micro-step and per recomputed block, and a per-parameter step cost."""
    df = pd.DataFrame(SHAPES * 2, columns=COLS)
    recipes = [{"optimizer": "auto"}, {"optimizer": "sgd", "grad_accum": 2}, {"checkpoint": "all"},
               {"optimizer": "sgd", "checkpoint": "2"}] * 2 + [
        {"grad_accum": 3, "checkpoint": "2"}, {"optimizer": "sgd", "grad_accum": 2, "checkpoint": "all"},
        {"grad_accum": 4}, {"optimizer": "sgd", "checkpoint": "3"}] * 2
    df = df.assign(recipe=[json.dumps(r) for r in recipes])
    f = frame_time_features(df, switches=True)
    best = (4.0 + 2e-9 * f["flops"] + 3e-6 * f["logits"] + 5e-5 * f["acts"] + 1e-9 * f["recompute"]
            + 0.5 * f["micro"] + 1e-6 * f["opt_fused"] + 3e-6 * f["opt_sgd"] + 0.2 * f["blocks"]
            + 0.3 * f["recompute_blocks"]).to_numpy()
    return df.assign(status="ok", source="sweep", ms_per_iter=best * slow, device_name="cpu: Test",
                     timings=[json.dumps({"step_ms": [b]}) for b in best])


def test_frame_time_features_read_each_rows_switches():
    df = recipe_points()
    f = frame_time_features(df, switches=True)
    assert list(f.index) == list(df.index)
    assert f["micro"].tolist() == [1, 2, 1, 1] * 2 + [3, 2, 4, 1] * 2  # grad_accum
    assert f["opt_fused"].tolist()[:4] == [f["params"][0], 0, f["params"][2], 0]  # auto is the fused AdamW
    assert f["opt_sgd"].tolist()[:4] == [0, f["params"][1], 0, f["params"][3]]
    assert f["recompute_acts"].tolist()[:4] == [0, 0, SHAPES[2][0] * 16 * 128 * 128,
                                                 math.ceil(SHAPES[3][0] / 2) * 2 * 64 * 256]
    assert "micro" not in frame_time_features(df.iloc[:0], switches=True).columns
    assert "micro" not in frame_time_features(df).columns


def test_a_switch_fit_prices_only_the_optimizers_it_measured():
    tp = fit_throughput(recipe_points(slow=1.1), switches=True)
    assert tp.model.features == (*THROUGHPUT, "recompute", "recompute_acts", "micro", "opt_fused", "opt_sgd",
                                 "blocks", "recompute_blocks")
    assert tp.model.predict_best(frame_time_features(recipe_points(), switches=True)) == pytest.approx(
        recipe_points()["ms_per_iter"].to_numpy(), rel=1e-3)
    assert tp.model.slowdown == pytest.approx(1.1) and tp.baseline.features == FLOPS


def test_the_cpu_time_of_a_step_is_its_best_where_recorded():
    assert best_step_ms({"step_cpu_ms": [3.0, 2.5], "step_ms": [9.0, 8.0]}) == 2.5
    assert best_step_ms(json.dumps({"step_cpu_ms": [], "step_ms": [9.0, 8.0]})) == 8.0  # none recorded: wall time


def test_the_peak_is_the_first_points_device():
    df = points(device="NVIDIA H100 80GB HBM3")
    df.loc[1:, "device_name"] = "cpu: Test"
    assert fit_throughput(df).peak_flops == 989e12


def test_switch_coefficients_in_their_units():
    tp = fit_throughput(recipe_points(), switches=True)
    rows = {r["term"]: r for r in tp.model.coefficients()}
    micro = tp.model.coef_[tp.model.features.index("micro")]
    assert rows["micro"]["value"] == pytest.approx(float(micro)) and rows["micro"]["unit"] == "ms per micro-step"
    assert rows["micro"]["value"] == pytest.approx(0.5, rel=1e-3)  # the law's 0.5 ms per micro-step, as it is
    assert rows["opt_sgd"]["value"] == pytest.approx(3.0, rel=1e-3) and rows["opt_sgd"]["unit"] == (
        "ms per 1e6 params (sgd step)")
    assert rows["blocks"]["value"] == pytest.approx(0.2, rel=1e-3) and rows["blocks"]["unit"] == (
        "ms per block per micro-step")
    assert rows["recompute_blocks"]["value"] == pytest.approx(0.3, rel=1e-3) and rows["recompute_blocks"][
        "unit"] == "ms per recomputed block"


def test_coefficients_of_a_file_whose_counts_disagree_are_refused():
    m = ThroughputModel.from_dict({"features": ["flops", "logits"], "intercept": 1.0, "coef": [2e-9]})
    with pytest.raises(ValueError, match="zip"):  # not a silently shorter table
        m.coefficients()
