"""Extrapolation: a fitted model knows the ranges it was measured on, and predict says when a config lies outside
them (with a wider margin), and stays quiet inside."""

import json

import pytest
from planner_data import synthetic_points

from vramfit.cli import main
from vramfit.fit.coverage import EXTRAPOLATION_MARGIN, check, ranges
from vramfit.plan.workflows import fit_and_save

INSIDE = dict(n_layer=4, n_head=4, n_embd=256, block_size=128, batch_size=4, vocab_size=512)


def test_ranges_and_check_by_axis():
    pts = synthetic_points()
    r = ranges(pts)
    assert r["n_layer"] == [2.0, 8.0] and r["batch_size"] == [1.0, 16.0] and r["vocab_size"] == [512.0, 8192.0]
    assert r["tokens"] == [128.0, 256.0 * 16] and r["params"][0] < r["params"][1]
    inside = check(r, INSIDE)
    assert inside.inside and inside.distance == 0 and inside.widened_margin(0.02) == 0.02
    far = check(r, {**INSIDE, "n_layer": 64})  # 8x the deepest measured, and more parameters than any point
    assert set(far.outside) == {"n_layer", "params"} and far.distance == pytest.approx(2.079, abs=0.01)
    assert far.widened_margin(0.02) == pytest.approx(0.02 + EXTRAPOLATION_MARGIN * far.distance)
    below = check(r, {**INSIDE, "batch_size": 1, "block_size": 64})
    assert "block_size" in below.outside and "tokens" in below.outside and "batch_size" not in below.outside
    assert check(None, {**INSIDE, "n_layer": 999}).inside  # model files fitted before ranges existed


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    ((_, path),) = fit_and_save(synthetic_points(), tmp_path_factory.mktemp("m"))
    return path


def predict(capsys, model_file, **shape):
    args = ["predict", "--model", str(model_file), "--json"]
    for k, v in {**INSIDE, **shape}.items():
        args += [f"--{'vocab' if k == 'vocab_size' else k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_predict_flags_extrapolation_and_widens_the_margin(capsys, model_file):
    doc = json.loads(model_file.read_text())
    assert doc["ranges"]["n_embd"] == [128.0, 512.0]
    inside, _ = predict(capsys, model_file)
    assert inside["extrapolated"] == [] and inside["extrapolation_margin_bytes"] == inside["margin_bytes"]
    far, _ = predict(capsys, model_file, n_embd=2048, n_head=16)
    assert far["extrapolated"] == ["n_embd", "n_head", "params"]
    assert far["extrapolation_margin_bytes"] > 2 * far["margin_bytes"]
    assert main(["predict", "--model", str(model_file), "--n-layer", "4", "--n-head", "16", "--n-embd", "2048",
                 "--block-size", "128", "--batch-size", "4", "--vocab", "512"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: an extrapolation, outside the measured range: ") and err.count("\n") == 1
    assert "n_embd 2,048 (measured 128-512)" in err and "vramfit estimate" in err
