"""Invariants of the memory model and of fit_points, on small synthetic data (milliseconds each): non-negative
coefficients where plain least squares goes negative, the 16 B/param optimizer-step floor, regimes, breakdowns,
JSON, OOM checks, the data hash and the feature columns."""

import itertools
import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from planner_data import TRUE, synthetic_points, true_memory

from vramfit.errors import VramfitError
from vramfit.fit.features import NAIVE, PHYSICS, features, frame_features, shape_key
from vramfit.fit.memmodel import (
    ADAMW_STEP_BYTES_PER_PARAM,
    MIN_MARGIN,
    MemoryModel,
    data_hash,
    fit_points,
    oom_violations,
)
from vramfit.fit.profile import Profile

GIB = 2**30


def activation_heavy():
    """Shapes at batch >= 4 whose memory has no optimizer-step regime, and whose attention term is negative:
    plain least squares fits attn = -0.25 exactly (the data are linear in the features)."""
    rows = [(L, C // 64, C, T, B, V) for L, C, T, B, V in
            itertools.product([2, 8], [128, 512], [128, 256], [4, 32], [512, 8192])]
    f = features(*np.array(rows).T)
    y = 2e8 + 12 * f["params"] + 12 * f["logits"] + 40 * f["acts"] + 8 * f["embed"] - 0.25 * f["attn"]
    return f, y


def frame(f: dict) -> pd.DataFrame:
    return pd.DataFrame({k: np.asarray(v) for k, v in f.items()})


def test_the_test_data_make_plain_least_squares_go_negative():
    f, y = activation_heavy()
    A = np.column_stack([np.ones(len(y)), *(f[k] for k in PHYSICS)])
    ols = np.linalg.lstsq(A, y, rcond=None)[0]
    assert ols[1 + PHYSICS.index("attn")] == pytest.approx(-0.25, rel=1e-6)


@pytest.mark.parametrize("feats, regimes", [(PHYSICS, 2), (PHYSICS, 1), (NAIVE, 1), (NAIVE, 2)])
def test_every_coefficient_is_non_negative(feats, regimes):
    f, y = activation_heavy()
    m = MemoryModel(feats, regimes=regimes).fit(frame(f), y)
    assert m.intercept_ >= 0 and (m.coef_ >= 0).all() and m.layer_coef_ >= 0
    assert m.step_coef_ >= 0 and m.step_intercept_ >= 0
    assert m.coef_[feats.index("params")] > 0  # and not all zero: it is a fit


def test_non_negative_intercept_where_least_squares_wants_a_negative_one():
    f, _ = activation_heavy()
    y = 3e3 * f["tokens"] ** 1.3  # convex in tokens: a straight line through it crosses zero above the origin
    A = np.column_stack([np.ones(len(y)), f["params"], f["tokens"]])
    assert np.linalg.lstsq(A, y, rcond=None)[0][0] < 0
    m = MemoryModel(("params", "tokens"), regimes=1).fit(frame(f), y)
    assert m.intercept_ == 0.0 and (m.coef_ >= 0).all() and m.coef_[1] > 0


def test_the_16_bytes_per_param_floor_applies_where_no_point_is_parameter_dominated():
    f, y = activation_heavy()
    m = MemoryModel(PHYSICS, regimes=2).fit(frame(f), y)
    assert m.n_step_points_ == 0
    assert m.step_coef_ == ADAMW_STEP_BYTES_PER_PARAM == 16.0
    assert m.step_intercept_ == m.intercept_
    # a big model at batch 1, far outside the data: the optimizer step decides, at >= 16 B/param
    big = features(48, 25, 1600, 64, 1, 50304)
    lin, step = m.parts(big)
    assert step[0] == pytest.approx(m.intercept_ + 16 * big["params"][0]) and step[0] > lin[0]
    assert m.predict(big)[0] == step[0]


def test_no_floor_without_the_step_regime_or_without_params():
    f, y = activation_heavy()
    one = MemoryModel(PHYSICS, regimes=1).fit(frame(f), y)
    assert one.step_coef_ == 0.0 and one.step_intercept_ == 0.0 and one.n_step_points_ == 0
    lin, step = one.parts(frame(f))
    assert np.isneginf(step).all() and np.array_equal(one.predict(frame(f)), lin)
    no_params = MemoryModel(("tokens",), regimes=2).fit(frame(f), y)
    assert no_params.step_coef_ == 0.0


@pytest.mark.parametrize("n", [2, 3])
def test_too_few_points_for_two_regimes_still_get_the_floor(n):
    f, y = activation_heavy()
    m = MemoryModel(PHYSICS, regimes=2).fit(frame(f).iloc[:n], y[:n])
    assert m.step_coef_ == 16.0 and m.n_step_points_ == 0 and m.n_points_ == n


def test_a_step_piece_beyond_24_bytes_per_param_is_not_the_step():
    """Points whose 'step' slope is 40 B/param are something else: the physical floor replaces the piece."""
    df = synthetic_points(noise=0.0)
    f = frame_features(df)
    common = TRUE["const"] + 12 * f["params"] + 40 * f["acts"] + 0.5 * f["attn"]
    y = np.maximum(common + 12 * f["logits"] + 8 * f["embed"], TRUE["step_const"] + 40 * f["params"])
    m = MemoryModel(PHYSICS, regimes=2).fit(f, y)
    assert m.step_coef_ == 16.0 and m.n_step_points_ == 0 and m.step_intercept_ == m.intercept_


def test_the_fitted_step_piece_is_kept_when_it_is_physical():
    df = synthetic_points(noise=0.0)
    m = MemoryModel(PHYSICS, regimes=2).fit(frame_features(df), df["nvml_bytes"])
    assert m.step_coef_ == pytest.approx(TRUE["step_params"], rel=1e-3) and m.n_step_points_ > 0
    assert m.step_intercept_ == m.intercept_  # the two pieces share the constant


def test_fewer_than_two_points_is_an_error():
    f, y = activation_heavy()
    with pytest.raises(VramfitError, match="need at least 2 measured points to fit, have 1"):
        MemoryModel().fit(frame(f).iloc[:1], y[:1])


def test_prediction_is_the_larger_piece_and_breakdown_sums_to_it():
    df = synthetic_points(noise=0.0)
    m = MemoryModel().fit(frame_features(df), df["nvml_bytes"])
    # one point per regime: loss transient (big vocab), in-layer transient (tiny vocab, wide), optimizer step
    f = features([4, 2, 48], [4, 8, 25], [256, 512, 1600], [256, 256, 64], [8, 32, 1], [50304, 64, 50304])
    lin, step = m.parts(f)
    pred = m.predict(f)
    assert np.array_equal(pred, np.maximum(lin, step))
    rows = m.breakdown(f)
    assert [r["regime"] for r in rows] == ["backward", "backward", "optimizer step"]
    for r, total in zip(rows, pred, strict=True):
        assert sum(v for k, v in r.items() if k != "regime") == pytest.approx(total, rel=1e-9)
    loss_t, layer_t = m._transients(f)
    assert loss_t[0] > layer_t[0] and layer_t[1] > loss_t[1]
    assert rows[0]["logits"] == pytest.approx(m.coef_[PHYSICS.index("logits")] * f["logits"][0])
    assert rows[1]["logits"] == 0.0  # the peak is inside a block: the MLP gradient, not the logits
    acts = m.coef_[PHYSICS.index("acts")] * f["acts"][1]
    assert rows[1]["activations"] == pytest.approx(acts + layer_t[1])
    assert rows[2]["params+optimizer"] == pytest.approx(m.step_coef_ * f["params"][2])
    assert rows[2]["constant"] == m.step_intercept_ and rows[2]["activations"] == 0.0
    # the in-layer transient is what the tiny-vocab point needs: without it the prediction drops
    m.layer_coef_ = 0.0
    assert m.predict(f)[1] < pred[1] and m.predict(f)[0] == pred[0]


def test_the_physics_model_recovers_the_in_layer_transient():
    df = synthetic_points(noise=0.0)
    m = MemoryModel().fit(frame_features(df), df["nvml_bytes"])
    assert m.physics and m.layer_coef_ == pytest.approx(TRUE["layer"], rel=1e-3)
    X = frame_features(df)
    assert np.allclose(m.predict(X), true_memory(*(df[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                    "batch_size", "vocab_size"))), rtol=1e-4)
    assert not MemoryModel(PHYSICS, regimes=1).physics and not MemoryModel(NAIVE, regimes=2).physics


def test_dict_round_trip_and_old_files():
    df = synthetic_points(noise=0.0)
    m = MemoryModel().fit(frame_features(df), df["nvml_bytes"])
    d = json.loads(json.dumps(m.to_dict()))
    assert d == {"features": list(PHYSICS), "regimes": 2, "intercept": m.intercept_, "coef": list(m.coef_),
                 "layer_coef": m.layer_coef_, "step_intercept": m.step_intercept_, "step_coef": m.step_coef_}
    back = MemoryModel.from_dict(d)
    f = features([2, 48], [2, 25], [128, 1600], [64, 64], [4, 1], [512, 50304])
    assert np.array_equal(back.predict(f), m.predict(f)) and back.regimes == 2
    old = MemoryModel.from_dict({"features": ["params", "tokens"], "intercept": 5.0, "coef": [2.0, 3.0]})
    assert old.regimes == 1 and old.step_coef_ == 0.0 and old.step_intercept_ == 0.0 and old.layer_coef_ == 0.0
    assert old.predict({"params": np.array([1.0]), "tokens": np.array([10.0])})[0] == 5.0 + 2.0 + 30.0


def test_coefficients_name_every_term_with_its_unit():
    df = synthetic_points(noise=0.0)
    m = MemoryModel().fit(frame_features(df), df["nvml_bytes"])
    rows = {r["term"]: (r["value"], r["unit"]) for r in m.coefficients()}
    assert rows["constant"] == (m.intercept_, "B")
    assert rows["params"] == (m.coef_[0], "B/param") and rows["attn"][1].startswith("B per token per layer")
    assert rows["in-layer transient"] == (m.layer_coef_, "B per token per channel")
    assert rows["step: params"] == (m.step_coef_, "B/param") and rows["step: constant"] == (m.step_intercept_, "B")
    naive = MemoryModel(NAIVE, regimes=1).fit(frame_features(df), df["nvml_bytes"])
    assert [r["term"] for r in naive.coefficients()] == ["constant", "params", "tokens"]
    assert naive.coefficients()[2]["unit"] == "B/token"


# ------------------------------------------------------------------------------------------------ fit_points


def small_points(noise: float = 0.0) -> pd.DataFrame:
    """16 of the synthetic points (8 shapes x 2 batches, both regimes): fit_points cross-validates in ~0.1 s."""
    df = synthetic_points(noise=noise)
    keep = df.n_layer.isin([2, 8]) & df.n_embd.isin([128, 512]) & (df.block_size == 128) & df.batch_size.isin([1, 16])
    return df[keep].reset_index(drop=True)



def test_target_auto_follows_the_device_and_unknown_targets_are_refused():
    df = small_points()
    assert fit_points(df).target == "nvml"
    cpu = df.assign(device_type="cpu", tracked_bytes=df["nvml_bytes"], nvml_bytes=np.nan)
    assert fit_points(cpu).target == "tracked"
    with pytest.raises(VramfitError, match="unknown reading 'vram'; choose one of nvml, allocated, reserved, rss, "
                                           "tracked"):
        fit_points(df, target="vram")


def test_only_ok_points_with_a_reading_are_fitted():
    df = small_points()
    bad = df.iloc[:5].assign(status="error", nvml_bytes=1.0)
    unread = df.iloc[5:8].assign(nvml_bytes=np.nan)
    report = fit_points(pd.concat([df, bad, unread], ignore_index=True), target="nvml")
    assert report.n_points == len(df) and report.metrics["ours"]["train"]["max_rel"] < 1e-3
    with pytest.raises(VramfitError, match="need at least 3 ok points with a nvml reading to fit, have 2"):
        fit_points(df.iloc[:2], target="nvml")
    with pytest.raises(VramfitError, match="no measured points to fit"):
        fit_points(df.iloc[:0], target="nvml")


def test_margin_is_the_worst_held_out_under_prediction_and_never_below_one_percent():
    df = small_points()
    exact = fit_points(df, target="nvml")
    worst = max(exact.metrics["ours"]["grouped"]["worst_under_rel"], exact.metrics["ours"]["loo"]["worst_under_rel"])
    assert worst < MIN_MARGIN and exact.margin_rel == MIN_MARGIN
    noisy = fit_points(small_points(noise=0.03), target="nvml")
    worst = max(noisy.metrics["ours"]["grouped"]["worst_under_rel"], noisy.metrics["ours"]["loo"]["worst_under_rel"])
    assert worst > MIN_MARGIN and noisy.margin_rel == worst


def test_one_shape_only_falls_back_to_leave_one_out():
    df = synthetic_points(noise=0.0)
    one = df[(df.n_layer == 4) & (df.n_embd == 256) & (df.vocab_size == 512)]
    report = fit_points(one, target="nvml", regimes=1)
    assert report.metrics["ours"]["grouped"] == report.metrics["ours"]["loo"]
    assert report.metrics["ours"]["grouped"]["n"] == len(one)


def test_report_fields_dry_run_model_and_json():
    df = small_points()
    report = fit_points(df, target="nvml", dryrun=lambda ok: 2.0 * ok["nvml_bytes"] + 7)
    assert report.device == "Synthetic GPU" and report.recipe_key == "r1"
    assert report.recipe == {"dtype": "bfloat16", "compile": True}
    assert report.dryrun.coef_[0] == pytest.approx(0.5) and report.metrics["dryrun"]["train"]["max_rel"] < 1e-6
    assert report.throughput is None  # no ms/iter column
    d = report.to_json()
    assert d["schema"] == 1 and d["dryrun"] == report.dryrun.to_dict() and d["n_points"] == len(df)
    assert d["throughput"] is None and d["margin_rel"] == report.margin_rel
    assert fit_points(df.assign(recipe=None), target="nvml").recipe == {}


def test_model_file_round_trip_and_errors(tmp_path):
    report = fit_points(small_points(), target="nvml", dryrun=lambda ok: ok["nvml_bytes"])
    path = report.save(tmp_path / "sub" / "m.json")
    assert path.is_file() and not path.with_suffix(".json.tmp").exists()
    doc = Profile.load(path)
    f = features(4, 4, 256, 256, 8, 512)
    assert doc.dryrun.predict({"estimate": np.array([5e8])})[0] == pytest.approx(5e8, rel=1e-6)
    assert doc.model.predict(f)[0] == report.model.predict(f)[0] and doc.throughput is None
    with pytest.raises(VramfitError, match=r"no model file at .*none\.json \(run `vramfit fit` first\)"):
        Profile.load(tmp_path / "none.json")
    for text in ("not json", json.dumps({"model": {}}), json.dumps([1, 2])):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(VramfitError, match="is not a vramfit model file"):
            Profile.load(tmp_path / "bad.json")


def test_oom_violations_compare_with_the_capacity_the_point_ran_under():
    df = small_points()
    report = fit_points(df, target="nvml")
    oom = df.iloc[[0, 1, 2, 3]].assign(status="oom", nvml_bytes=np.nan)
    pred = report.model.predict(frame_features(oom))
    oom = oom.assign(capacity_bytes=[pred[0], pred[1] - 1, np.nan, 1e15], total_memory_bytes=1e15)
    out = oom_violations(report.model, pd.concat([df, oom], ignore_index=True))
    # equal capacity: the model said it fits (violation); just below: fine; unknown: skipped; huge: violation
    assert [(v["batch_size"], v["n_layer"]) for v in out] == [(int(oom.iloc[i]["batch_size"]),
                                                               int(oom.iloc[i]["n_layer"])) for i in (0, 3)]
    assert out[0]["predicted"] == pytest.approx(pred[0]) and out[0]["capacity"] == pred[0]
    no_cap = pd.concat([df, oom.drop(columns=["capacity_bytes"])], ignore_index=True)
    assert len(oom_violations(report.model, no_cap)) == 4  # total_memory_bytes (1e15) when no capacity column
    assert oom_violations(report.model, df) == []
    assert oom_violations(report.model, oom.drop(columns=["capacity_bytes", "total_memory_bytes"])) == []


def test_data_hash_is_order_free_and_follows_the_readings():
    df = small_points()
    h = data_hash(df, "nvml_bytes")
    assert len(h) == 16 and int(h, 16) >= 0
    assert data_hash(df.iloc[::-1], "nvml_bytes") == h
    assert data_hash(df.assign(nvml_bytes=df["nvml_bytes"] + 1), "nvml_bytes") != h
    assert data_hash(df.assign(device_name="other"), "nvml_bytes") == h  # shapes and readings only


# ------------------------------------------------------------------------------------------------ features


def test_features_table():
    f = features(2, 4, 64, 32, 3, 100, bias=False)
    N = 96
    P = 100 * 64 + 32 * 64 + 2 * (2 * 64 + 4 * 64 * 64 + 8 * 64 * 64) + 64  # no biases
    assert f["params"][0] == P and f["tokens"][0] == N and f["logits"][0] == N * 100
    assert f["acts"][0] == N * 2 * 64 and f["attn"][0] == N * 2 * 4 * 32 and f["embed"][0] == N * 64
    assert features(2, 4, 64, 32, 3, 100)["params"][0] > P  # biases by default
    g = features([1, 2], 2, 64, 32, [1, 2], 100)  # broadcasting, float64
    assert g["tokens"].tolist() == [32.0, 64.0] and g["acts"].dtype == np.float64


def test_frame_features_and_shape_key():
    df = small_points().iloc[:3]
    ff = frame_features(df)
    assert list(ff.index) == list(df.index) and set(ff.columns) == {"params", "tokens", "logits", "acts", "attn",
                                                                     "embed"}
    assert ff["params"].iloc[0] == features(*(df.iloc[0][k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                         "batch_size", "vocab_size")))["params"][0]
    assert frame_features(df, bias=False)["params"].iloc[0] < ff["params"].iloc[0]
    picked = small_points().iloc[[5, 2, 9]]  # a filtered frame keeps its row labels: the features align with them
    assert list(frame_features(picked).index) == [5, 2, 9]
    with pytest.raises(KeyError, match="points lack columns: n_head, batch_size"):
        frame_features(df.drop(columns=["n_head", "batch_size"]))
    assert shape_key(df).iloc[0] == "2x2x128/v512"


# ------------------------------------------------------------------------------------------------ edges mutmut found


def hand_model(**kw) -> MemoryModel:
    """A physics model with hand-set coefficients (PHYSICS order: params, logits, acts, attn, embed)."""
    d = {"features": list(PHYSICS), "regimes": 2, "intercept": 100.0, "coef": [1.0, 1.0, 2.0, 0.0, 0.0],
         "layer_coef": 0.0, "step_intercept": 100.0, "step_coef": 16.0} | kw
    return MemoryModel.from_dict(d)


def cols(**kw) -> dict:
    base = {"params": [10.0], "logits": [0.0], "acts": [0.0], "attn": [0.0], "embed": [0.0], "tokens": [1.0]}
    return {k: np.asarray(v, dtype=np.float64) for k, v in (base | kw).items()}


def test_breakdown_rows_name_every_part_in_both_regimes():
    m = hand_model()
    X = cols(params=[100.0, 1.0], logits=[0.0, 50.0], acts=[0.0, 10.0], attn=[0.0, 0.0], embed=[0.0, 1.0],
             tokens=[1.0, 1.0])
    step, back = m.breakdown(X)  # the step row first: the loop goes on to the next point
    assert step == {"regime": "optimizer step", "constant": 100.0, "params+optimizer": 1600.0, "logits": 0.0,
                    "activations": 0.0, "attention": 0.0}
    assert back == {"regime": "backward", "constant": 100.0, "params+optimizer": 1.0, "logits": 50.0,
                    "activations": 20.0, "attention": 0.0}


def test_a_tie_between_the_pieces_is_the_backward_regime():
    m = hand_model(coef=[2.0, 1.0, 0.0, 0.0, 0.0], step_coef=4.0)
    X = cols(params=[10.0], logits=[20.0])  # backward 100 + 20 + 20 = step 100 + 40
    lin, step = m.parts(X)
    assert lin[0] == step[0] == 140.0 and m.breakdown(X)[0]["regime"] == "backward"


def test_a_tie_between_the_transients_keeps_the_peak_at_the_loss():
    m = hand_model(coef=[0.0, 1.0, 0.0, 0.0, 0.0], layer_coef=10.0, step_coef=0.0)
    X = cols(logits=[100.0], embed=[10.0])  # loss transient 100 = in-layer transient 10 x 10
    (row,) = m.breakdown(X)
    assert row["logits"] == 100.0 and row["activations"] == 0.0


@pytest.mark.parametrize("layer_coef", [0.5, 30.0])
def test_any_positive_in_layer_coefficient_counts(layer_coef):
    m = hand_model(coef=[0.0, 0.0, 1.0, 0.0, 0.0], layer_coef=layer_coef, step_coef=0.0)
    X = cols(acts=[10.0], embed=[100.0])  # no loss transient: the in-layer one is the peak
    assert m.predict(X)[0] == 100.0 + 10.0 + layer_coef * 100.0
    (row,) = m.breakdown(X)
    assert row["activations"] == 10.0 + layer_coef * 100.0 and row["logits"] == 0.0


def test_a_naive_model_with_a_stray_layer_coefficient_still_breaks_down():
    m = MemoryModel.from_dict({"features": ["params", "tokens"], "regimes": 1, "intercept": 1.0, "coef": [2.0, 3.0],
                               "layer_coef": 5.0})
    (row,) = m.breakdown(cols(params=[1.0], tokens=[1.0]))
    assert row["constant"] == 1.0 and row["params+optimizer"] == 2.0 and not m.physics


def test_coefficients_list_any_step_piece():
    rows = [r["term"] for r in hand_model(step_coef=0.5).coefficients()]
    assert rows[-2:] == ["step: constant", "step: params"]
    assert "step: params" not in [r["term"] for r in hand_model(step_coef=0.0).coefficients()]


def test_from_dict_reads_the_in_layer_coefficient():
    m = MemoryModel.from_dict(hand_model(layer_coef=7.5).to_dict())
    assert m.layer_coef_ == 7.5
    assert m.predict(cols(params=[0.0], embed=[10.0]))[0] == 100.0 + 75.0


def test_report_json_has_every_field(tmp_path):
    df = small_points().assign(ms_per_iter=5.0, source="sweep")
    report = fit_points(df, target="nvml")
    assert report.throughput is not None and report.dryrun is None
    d = report.to_json()
    assert d == {"schema": 1, "device": "Synthetic GPU", "recipe_key": "r1", "recipe": report.recipe,
                 "target": "nvml", "model": report.model.to_dict(), "baseline": report.baseline.to_dict(),
                 "coefficients": report.model.coefficients(), "metrics": report.metrics,
                 "margin_rel": report.margin_rel, "data_hash": report.data_hash, "n_points": 16,
                 "oom_violations": [], "dryrun": None, "throughput": report.throughput.to_json(),
                 "device_type": "cuda", "total_memory_bytes": report.total_memory_bytes,
                 "compute_capability": report.compute_capability, "ranges": report.ranges,
                 "fitted_at": report.fitted_at, "source": "sweep"}
    assert d["ranges"]["n_layer"][0] <= d["ranges"]["n_layer"][1]
    assert datetime.fromisoformat(d["fitted_at"]).tzinfo is not None  # when it was fitted, in UTC
    path = report.save(tmp_path / "a" / "b" / "m.json")  # parent folders are made
    assert path.read_text().startswith('{\n "schema": 1,\n "device": "Synthetic GPU"')  # indent 1: readable
    report.save(path)  # and saving again over it works
    doc = Profile.load(path)
    assert doc.dryrun is None and doc.baseline.features == NAIVE
    assert doc.baseline.predict(frame_features(df)).tolist() == report.baseline.predict(frame_features(df)).tolist()
    assert doc.throughput.model.to_dict() == report.throughput.model.to_dict()


def test_fit_points_models_cv_frame_and_hash():
    df = small_points(noise=0.02)
    report = fit_points(df, target="nvml")
    assert report.model.features == PHYSICS and report.model.regimes == 2
    assert report.baseline.features == NAIVE and report.baseline.regimes == 1
    ok = df.reset_index(drop=True)
    assert report.data_hash == data_hash(ok, "nvml_bytes")
    cv = report.cv
    assert cv["measured"].tolist() == ok["nvml_bytes"].tolist() and cv["shape"].tolist() == shape_key(ok).tolist()
    X = frame_features(ok)
    assert cv["ours_fit"].tolist() == report.model.predict(X).tolist()
    assert cv["naive_fit"].tolist() == report.baseline.predict(X).tolist()
    assert cv["ours_grouped"].notna().all() and cv["ours_loo"].notna().all()
    # grouped CV holds whole shapes out: its predictions are not leave-one-out's
    assert not np.allclose(cv["ours_grouped"], cv["ours_loo"])
    one = fit_points(df, target="nvml", regimes=1)
    assert one.model.regimes == 1 and one.model.step_coef_ == 0.0


def test_two_shapes_are_enough_for_grouped_cv():
    df = small_points(noise=0.02)
    two = pd.concat([synthetic_points(noise=0.02).query("n_layer == 2 and n_embd == 128 and vocab_size == 512"),
                     synthetic_points(noise=0.02).query("n_layer == 4 and n_embd == 256 and vocab_size == 512")])
    report = fit_points(two, target="nvml", regimes=1)
    assert report.cv["shape"].nunique() == 2
    assert not np.allclose(report.cv["ours_grouped"], report.cv["ours_loo"])
    assert len(df) == 16


def test_exactly_three_points_fit_and_one_is_refused():
    df = small_points()
    assert fit_points(df.iloc[:3], target="nvml", regimes=1).n_points == 3
    with pytest.raises(VramfitError, match=r"^need at least 3 ok points with a nvml reading to fit, have 1$"):
        fit_points(df.iloc[:1], target="auto")
    with pytest.raises(VramfitError, match=r"^no measured points to fit \(run `vramfit sweep` first\)$"):
        fit_points(df.iloc[:0])


def test_exact_physics_is_recovered_exactly_with_vocabularies_near_the_width():
    """Vocab 384 and 448 at width 256 put the loss transient (12 NV + 8 NC) just above the in-layer one (24 NC):
    the fit must assign each point to the right transient to reproduce the data to rounding."""
    rows = [(L, C // 64, C, T, B, V) for L, C, T, B, V in
            itertools.product([2, 4, 8], [128, 256, 512], [128, 256], [4, 16], [64, 384, 448, 8192])]
    f = features(*np.array(rows).T)
    y = true_memory(*np.array(rows).T)
    m = MemoryModel().fit(frame(f), y)
    assert np.abs(m.predict(frame(f)) / y - 1).max() < 1e-9
    assert m.layer_coef_ == pytest.approx(TRUE["layer"], rel=1e-9)


def test_non_physics_models_have_no_in_layer_term():
    f, y = activation_heavy()
    assert MemoryModel(NAIVE, regimes=1).fit(frame(f), y).layer_coef_ == 0.0
    assert MemoryModel(PHYSICS, regimes=1).fit(frame(f), y).layer_coef_ == 0.0


def test_any_positive_step_slope_is_a_step_piece():
    m = hand_model(coef=[0.0, 0.0, 0.0, 0.0, 0.0], step_coef=0.5)
    assert m.predict(cols(params=[1000.0]))[0] == 100.0 + 500.0


def test_data_hash_ignores_row_labels():
    df = small_points()
    assert data_hash(df.set_axis(range(100, 100 + len(df))), "nvml_bytes") == data_hash(df, "nvml_bytes")


def test_fit_points_reports_oom_rows_predicted_to_fit():
    df = small_points()
    oom = df.iloc[[0]].assign(status="oom", nvml_bytes=np.nan, total_memory_bytes=1e15)
    report = fit_points(pd.concat([df, oom], ignore_index=True), target="nvml")
    assert [v["batch_size"] for v in report.oom_violations] == [int(oom.iloc[0]["batch_size"])]
