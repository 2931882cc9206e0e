import json

import numpy as np
import pytest
from planner_data import TRUE, synthetic_points

from vramfit.errors import VramfitError
from vramfit.fit.features import PHYSICS, features, frame_features
from vramfit.fit.memmodel import MemoryModel, fit_points
from vramfit.fit.profile import Profile


def test_recovers_known_coefficients():
    df = synthetic_points()
    m = MemoryModel().fit(frame_features(df), df["nvml_bytes"])
    coef = dict(zip(m.features, m.coef_, strict=True))
    for k in ("params", "logits", "acts", "embed"):
        assert coef[k] == pytest.approx(TRUE[k], rel=0.05), k
    assert m.layer_coef_ == pytest.approx(TRUE["layer"], rel=0.05)  # the in-layer transient (small vocab, wide)
    assert m.intercept_ == pytest.approx(TRUE["const"], rel=0.02)
    assert m.step_coef_ == pytest.approx(TRUE["step_params"], rel=0.02)
    assert m.n_step_points_ > 0  # the parameter-dominated points were assigned to the optimizer-step regime


def test_linear_model_cannot_capture_both_regimes():
    df = synthetic_points()
    X, y = frame_features(df), df["nvml_bytes"].to_numpy()
    two = np.abs(MemoryModel(regimes=2).fit(X, y).predict(X) / y - 1).max()
    one = np.abs(MemoryModel(regimes=1).fit(X, y).predict(X) / y - 1).max()
    assert two < 0.01 < one


def test_fit_points_cv_margin_and_baseline():
    report = fit_points(synthetic_points(), target="nvml")
    ours, naive = report.metrics["ours"], report.metrics["naive"]
    assert ours["grouped"]["max_rel"] < 0.02
    assert naive["grouped"]["max_rel"] > 5 * ours["grouped"]["max_rel"]
    assert ours["loo"]["n"] == ours["grouped"]["n"] == report.n_points == 108
    worst = max(ours["grouped"]["worst_under_rel"], ours["loo"]["worst_under_rel"])
    assert report.margin_rel == pytest.approx(max(0.01, worst))
    assert set(report.cv.columns) >= {"measured", "ours_grouped", "naive_grouped"}


def test_json_roundtrip(tmp_path):
    report = fit_points(synthetic_points(), target="nvml")
    path = report.save(tmp_path / "m.json")
    doc = Profile.load(path)
    f = features(12, 12, 768, 1024, 12, 50304)
    assert doc.model.predict(f) == pytest.approx(report.model.predict(f))
    assert doc.baseline.predict(f) == pytest.approx(report.baseline.predict(f))
    raw = json.loads(path.read_text())
    assert raw["device"] == "Synthetic GPU" and raw["recipe_key"] == "r1" and len(raw["data_hash"]) == 16
    assert {"B/param", "B per token per vocab entry"} <= {c["unit"] for c in raw["coefficients"]}


def test_breakdown_sums_to_prediction():
    report = fit_points(synthetic_points(), target="nvml")
    f = features([12, 1], [12, 1], [768, 4096], [1024, 64], [12, 1], [50304, 50304])
    pred = report.model.predict(f)
    parts = report.model.breakdown(f)
    assert [p["regime"] for p in parts] == ["backward", "optimizer step"]
    for p, total in zip(parts, pred, strict=True):
        assert sum(v for k, v in p.items() if k != "regime") == pytest.approx(total)


def test_oom_rows_predicted_to_fit_are_reported():
    df = synthetic_points()
    oom = df.iloc[[0, -1]].copy()
    oom["status"], oom["nvml_bytes"] = "oom", np.nan
    oom["total_memory_bytes"] = [1e15, 1.0]  # first: huge capacity (model says fits -> violation), second: tiny
    report = fit_points(__import__("pandas").concat([df, oom], ignore_index=True), target="nvml")
    assert len(report.oom_violations) == 1
    assert report.oom_violations[0]["batch_size"] == int(oom.iloc[0]["batch_size"])


def test_fit_errors():
    df = synthetic_points()
    with pytest.raises(VramfitError, match="unknown reading"):
        fit_points(df, target="vram")
    with pytest.raises(VramfitError, match="no measured points"):
        fit_points(df.iloc[:0])
    with pytest.raises(VramfitError, match="at least 3 ok points"):
        fit_points(df.iloc[:2])
    with pytest.raises(VramfitError, match="not a vramfit model"):
        bad = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "bad.json"
        bad.write_text("{}")
        Profile.load(bad)


def test_physics_features_are_what_the_docs_say():
    f = features(2, 4, 64, 32, 3, 100)
    N = 3 * 32
    assert (f["tokens"][0], f["logits"][0], f["acts"][0], f["attn"][0], f["embed"][0]) == (
        N, N * 100, N * 2 * 64, N * 2 * 4 * 32, N * 64)
    assert set(PHYSICS) <= set(f)
