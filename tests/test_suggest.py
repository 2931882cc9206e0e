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
    from vramfit.dryrun.context import context_row

    assert doc["target"] == "nvml"
    for s in doc["suggestions"]:  # verified by the estimator itself: context + peak reserved within budget
        assert s["predicted_bytes"] > context_row((8, 0)).bytes and s["predicted_bytes"] <= 2 * GIB


NANOGPT_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, vocab_size=65)
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=12, vocab_size=50304)
SHAKESPEARE_TOKENS = 1_003_854  # tiny-shakespeare's training split, characters


def _need(report, cfg):
    f = features(*(cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")))
    return float(report.model.predict(f)[0]) * (1 + report.margin_rel)


def _covers(items, cfg):
    """The config itself (at its batch or more) is suggested, or an answer dominates it: at least its params,
    tokens per step and block."""
    p = int(features(*(cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                         "vocab_size")))["params"][0])
    n = cfg["batch_size"] * cfg["block_size"]
    return any((s.n_layer, s.n_embd, s.block_size) == (cfg["n_layer"], cfg["n_embd"], cfg["block_size"])
               and s.batch_size >= cfg["batch_size"] for s in items) or any(
        s.params >= p and s.tokens_per_step >= n and s.block_size >= cfg["block_size"] for s in items)


@pytest.mark.parametrize("gib, vocab", [(4, 65), (8, 65), (24, 65), (2, 50304), (8, 50304), (24, 50304)])
def test_default_ranking_has_no_batch_1_where_params_ranking_does(report, gib, vocab):
    """The old default (`params`) answers with batch 1 on these budgets although larger batches fit nearby
    shapes; the default (`trainable`) does not, and its top 5 are distinct models."""
    old = suggest(report.model, report.margin_rel, gib * GIB, objective="params", top=5, vocab_size=vocab)
    assert any(s.batch_size == 1 for s in old)  # the failure the default exists to avoid
    items = suggest(report.model, report.margin_rel, gib * GIB, top=5, vocab_size=vocab)
    assert items.ranking["objective"] == "trainable" and len(items) == 5
    assert all(s.batch_size > 1 for s in items), [(s.n_layer, s.n_embd, s.batch_size) for s in items]
    assert len({(s.n_layer, s.n_embd) for s in items}) == 5


@pytest.mark.parametrize("gib", [4, 8, 24])
def test_default_top5_covers_nanogpt_shakespeare_char(report, gib):
    """A budget that fits nanoGPT's train_shakespeare_char with room to spare: the default top 5 contains it or
    an answer at least as large at least as many tokens per step and at least its block."""
    assert _need(report, NANOGPT_CHAR) * 1.5 <= gib * GIB
    items = suggest(report.model, report.margin_rel, gib * GIB, top=5, vocab_size=65,
                    corpus_tokens=SHAKESPEARE_TOKENS)
    assert _covers(items, NANOGPT_CHAR), [(s.n_layer, s.n_embd, s.block_size, s.batch_size) for s in items]
    params_first = suggest(report.model, report.margin_rel, gib * GIB, objective="params", top=5, vocab_size=65)
    assert not _covers(params_first, NANOGPT_CHAR)  # what the default fixes


@pytest.mark.parametrize("gib", [24, 40, 80])
def test_default_top5_covers_gpt2_small(report, gib):
    assert _need(report, GPT2_SMALL) * 1.25 <= gib * GIB
    items = suggest(report.model, report.margin_rel, gib * GIB, top=5, vocab_size=50304)
    assert _covers(items, GPT2_SMALL), [(s.n_layer, s.n_embd, s.block_size, s.batch_size) for s in items]


def test_trainable_floors_are_applied_and_reported(report):
    """Every answer meets the floors the ranking reports; a small corpus caps the model size (the cap doubles
    only until 5 models pass); the score is the params it was sorted by, best first."""
    from vramfit.plan.suggest import PARAMS_PER_CORPUS_TOKEN, TOKENS_FLOOR

    items = suggest(report.model, report.margin_rel, 8 * GIB, top=5, vocab_size=65, corpus_tokens=200_000)
    r = items.ranking
    assert r["tokens_floor"] == TOKENS_FLOOR and r["block_range"] == [256, 1024]
    assert r["max_params"] == PARAMS_PER_CORPUS_TOKEN * 200_000
    for s in items:
        assert s.tokens_per_step >= r["tokens_floor"] and 256 <= s.block_size <= 1024
        assert s.params - s.block_size * s.n_embd <= r["max_params"]
        assert s.score == s.params - s.block_size * s.n_embd  # nanoGPT's count, without position embeddings
    assert [s.score for s in items] == sorted((s.score for s in items), reverse=True)
    unbounded = suggest(report.model, report.margin_rel, 8 * GIB, top=5, vocab_size=65)
    assert unbounded[0].params > 2 * r["max_params"]  # the cap is what kept the models small
    tiny = suggest(report.model, report.margin_rel, 8 * GIB, top=5, vocab_size=65, corpus_tokens=10)
    assert len(tiny) == 5 and tiny.ranking["max_params"] > PARAMS_PER_CORPUS_TOKEN * 10  # relaxed, not empty
    small = suggest(report.model, report.margin_rel, int(1.5 * GIB), top=5, vocab_size=50304)
    assert small.ranking["tokens_floor"] < TOKENS_FLOOR and len(small) == 5  # halved until 5 models fit
    # each model at the longest block that still takes several sequences, not at block 1024 with batch 1
    assert all(s.batch_size >= 4 and s.tokens_per_step >= small.ranking["tokens_floor"] for s in small)
