import json
from importlib import resources

import numpy as np
import pytest
from planner_data import synthetic_points

from vramfit.errors import VramfitError
from vramfit.fit.features import features
from vramfit.fit.memmodel import fit_points
from vramfit.plan.suggest import enumerate_space, suggest

jsonschema = pytest.importorskip("jsonschema")  # a dev dependency; absent on some GPU images

GIB = 2**30


@pytest.fixture(scope="module")
def report():
    return fit_points(synthetic_points(), target="nvml")


@pytest.mark.parametrize("objective", ["params", "tokens", "balanced"])
def test_every_suggestion_fits_with_margin(report, objective):
    items = suggest(report.model, report.margin_rel, 8 * GIB, objective=objective, top=20)
    assert len(items) == 20
    for s in items:
        pred = float(report.model.predict(features(s.n_layer, s.n_head, s.n_embd, s.block_size, s.batch_size,
                                                   s.vocab_size))[0])
        assert pred * (1 + report.margin_rel) <= 8 * GIB
        assert s.predicted_bytes + s.margin_bytes + s.headroom_bytes == pytest.approx(8 * GIB, abs=4)
        assert s.n_embd % s.n_head == 0
    key = {"params": lambda s: s.params, "tokens": lambda s: s.tokens_per_step,
           "balanced": lambda s: s.params * s.tokens_per_step}[objective]
    values = [key(s) for s in items]
    assert values == sorted(values, reverse=True)


def test_fixed_shape_gives_largest_batch(report):
    shape = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    (s,) = suggest(report.model, report.margin_rel, 8 * GIB, objective="tokens", top=3, **shape)
    assert (s.n_layer, s.n_embd, s.block_size) == (12, 768, 1024)

    def need(b):
        return float(report.model.predict(features(12, 12, 768, 1024, b, 50304))[0]) * (1 + report.margin_rel)

    assert need(s.batch_size) <= 8 * GIB < need(s.batch_size + 1)


def test_nothing_fits_and_budget_below_constant(report):
    assert suggest(report.model, report.margin_rel, int(0.45 * GIB), n_layer=48, n_embd=4096) == []
    with pytest.raises(VramfitError, match="below this device's constant"):
        suggest(report.model, report.margin_rel, 100 * 2**20)
    with pytest.raises(VramfitError, match="unknown objective"):
        suggest(report.model, report.margin_rel, 8 * GIB, objective="speed")


def test_space_respects_heads_and_aspect():
    space = enumerate_space()
    space.pop("_n_batches")
    hd = space["n_embd"] / space["n_head"]
    assert set(np.unique(hd)) <= {32, 64, 128}
    aspect = space["n_embd"] / space["n_layer"]
    assert aspect.min() >= 16 and aspect.max() <= 256
    with pytest.raises(VramfitError, match="divide"):
        enumerate_space(n_head=[7], n_embd=[64])


def test_json_output_matches_schema(capsys, tmp_path, report):
    from vramfit.cli import main

    model = report.save(tmp_path / "m.json")
    rc = main(["suggest", "--vram", "8G", "--reserve", "500M", "--model", str(model), "--json", "--top", "3",
               "--save", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    schema = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["budget_bytes"] == 8 * GIB - 500 * 2**20 and len(doc["suggestions"]) == 3
    assert json.loads((tmp_path / "s.json").read_text()) == doc


@pytest.mark.slow
def test_no_profile_plans_from_dry_run_estimates(capsys, tmp_path):
    from vramfit.cli import main

    rc = main(["suggest", "--vram", "2G", "--no-profile", "--vocab", "256", "--n-layer", "2,4", "--block-size",
               "256", "--top", "3", "--json", "--save", str(tmp_path / "s.json")])
    captured = capsys.readouterr()
    assert rc == 0
    assert "warning: no profile of this device" in captured.err
    doc = json.loads(captured.out)
    schema = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert 1 <= len(doc["suggestions"]) <= 3
    for s in doc["suggestions"]:  # verified by the estimator itself: context + slack + peak within budget
        assert s["predicted_bytes"] > 512 * 2**20 and s["predicted_bytes"] <= 2 * GIB
