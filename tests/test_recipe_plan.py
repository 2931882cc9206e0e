"""`suggest --tokens-per-step`: the recipe search (plan.recipes): the split of a step into micro-batch x
accumulation, the bisection, the dry run's steady accumulation, the ranking and the commands it prints."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from gpt.config import GPTConfig
from vramfit.cli import main
from vramfit.dryrun.estimate import EstimateRequest, estimate_step
from vramfit.errors import VramfitError
from vramfit.plan.recipes import (
    ACCUM_STEADY,
    Point,
    Pricer,
    RecipeAxes,
    candidate_groups,
    largest_fitting,
    recipe_axes,
    search,
    splits,
    step_tflop,
)
from vramfit.plan.workflows import suggestion_overrides
from vramfit.recipe import Recipe
from vramfit.shape import Shape

GOLDEN = Path(__file__).parent / "golden"
TINY = Shape(2, 2, 64, 64, 1, 128)


@pytest.mark.parametrize("recipe", [dict(optimizer="fused"), dict(optimizer="adafactor", checkpoint="all")])
def test_a_steps_peak_is_the_same_for_every_accumulation_from_the_steady_count(recipe):
    """Why the dry run estimates 128 micro-steps as ACCUM_STEADY: byte-exact on the CPU (real tracker rules)."""
    mc = GPTConfig(2, 2, 64, 64, 128)

    def peak(accum: int) -> int:
        r = Recipe(dtype="float32", grad_accum=accum, **recipe)
        return estimate_step(EstimateRequest(mc, 2, r, target="cpu", headline_only=True)).peak_bytes

    steady = peak(ACCUM_STEADY)
    assert peak(ACCUM_STEADY + 3) == steady
    assert peak(1) < steady  # accumulation keeps the gradients through the next micro-step's forward


def test_splits_cover_the_tokens_exactly():
    assert splits(8192, 128) == [(1, 64), (2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1)]
    assert splits(768, 256) == [(1, 3), (3, 1)]
    assert splits(1000, 128) == []
    assert all(b * a * 1024 == 524288 for b, a in splits(524288, 1024))


def test_axes_are_validated_in_one_line():
    assert recipe_axes("524,288", "none,all,2,all", "fused,sgd") == RecipeAxes(524288, ("none", "all", "2"),
                                                                               ("fused", "sgd"))
    for args in (("0", None, None), ("many", None, None), ("8", "sometimes", None), ("8", None, "lion"),
                 ("8", None, "auto")):
        with pytest.raises(VramfitError):
            recipe_axes(*args)


def test_groups_skip_an_interval_beyond_the_layers():
    groups = candidate_groups([TINY], RecipeAxes(256, ("none", "2", "4")), Recipe(optimizer="fused"))
    assert [g[0].recipe.checkpoint for g in groups] == ["none", "2"]
    assert [(p.shape.batch_size, p.recipe.grad_accum) for p in groups[0]] == [(1, 4), (2, 2), (4, 1)]


def test_bisection_finds_each_groups_last_fitting_point_in_few_rounds():
    groups = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5, 6], [20, 30], [1]]
    calls = []

    def need(points):
        calls.append(len(points))
        return [p * 10 for p in points]

    assert largest_fitting(groups, need, 45) == [(3, 40.0), None, None, (0, 10.0)]
    assert len(calls) <= 4 and sum(calls) <= 10  # one round prices every open group at once


def test_checkpointing_costs_one_more_forward_of_each_checkpointed_block():
    shape = Shape(12, 12, 768, 1024, 4, 50304)
    plain, every2, every_block = (step_tflop(Point(shape, Recipe(grad_accum=128, checkpoint=c)))
                                  for c in ("none", "2", "all"))
    assert plain < every2 < every_block
    assert every_block - plain == pytest.approx(2 * (every2 - plain))  # blocks 0, 2, ..., 10: half of them
    assert 0.2 < (every_block - plain) / plain < 1 / 3  # a forward is a third of the blocks' work, not lm_head's


def test_search_ranks_by_time_then_fewer_micro_steps():
    """A pricer whose memory grows with the micro-batch and falls with checkpointing; time by the micro-steps."""
    def need(points):
        return [p.shape.batch_size * (50 if p.recipe.checkpoint == "none" else 20) + 100 for p in points]

    def ms(points):
        import numpy as np

        return np.array([p.recipe.grad_accum * 10.0 * (1.3 if p.recipe.checkpoint != "none" else 1.0)
                         for p in points])

    items = search([TINY], RecipeAxes(4096, ("none", "all")), Recipe(optimizer="fused"), Pricer(need, ms, 0.0),
                   budget=1000, top=5)
    assert [(s.checkpoint, s.batch_size, s.grad_accum) for s in items] == [("all", 32, 2), ("none", 16, 4)]
    assert all(s.tokens_per_step == 4096 and s.headroom_bytes >= 0 for s in items)
    assert items[0].ms_per_step == pytest.approx(26.0)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe-plan")
    shutil.copy(GOLDEN / "demo.sqlite", folder / "demo.sqlite")
    return folder


def test_with_a_profile_of_one_recipe_only_its_recipe_is_searched(profiled, monkeypatch, capsys):
    monkeypatch.chdir(profiled)
    assert main(["fit", "--db", "demo.sqlite", "--models", "models"]) == 0
    (model,) = Path("models").glob("*.json")
    capsys.readouterr()
    args = ["suggest", "--vram", "256M", "--target", "cpu", "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
            "--block-size", "64", "--vocab", "65", "--model", str(model), "--suggestions-file", "s.json"]
    assert main([*args, "--tokens-per-step", "512", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["suggestions"]
    assert (row["batch_size"], row["grad_accum"], row["checkpoint"], row["optimizer"]) == (8, 1, "none", "fused")
    assert row["ms_per_step"] > 0 and doc["tokens_per_step"] == 512
    overrides = suggestion_overrides(doc, row)
    assert (overrides["batch_size"], overrides["grad_accum"], overrides["checkpoint"]) == (8, 1, "none")
    assert main([*args, "--json"]) == 0
    today = json.loads(capsys.readouterr().out)
    assert main([*args, "--json", "--recipe", "fixed"]) == 0  # without --tokens-per-step: today's suggest
    assert json.loads(capsys.readouterr().out) == today
    assert main([*args, "--tokens-per-step", "1024", "--checkpoint", "all"]) == 2  # accum 2 and checkpointing
    err = capsys.readouterr().err
    assert err.startswith("error: this profile (") and "was fitted on one recipe" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def switch_profile(tmp_path_factory) -> Path:
    """The profile of tests/golden/recipes.sqlite (docs/recipes.md's sweep: 8 recipes of one family)."""
    folder = tmp_path_factory.mktemp("recipe-profile")
    shutil.copy(GOLDEN / "recipes.sqlite", folder / "recipes.sqlite")
    assert main(["fit", "--db", str(folder / "recipes.sqlite"), "--models", str(folder / "models")]) == 0
    (model,) = (folder / "models").glob("*.json")
    return model


SMALL = ["--n-layer", "4", "--n-head", "2", "--n-embd", "128", "--block-size", "64", "--vocab", "65"]


def test_a_switch_profile_ranks_the_largest_fitting_micro_batch_of_each_recipe_by_time(switch_profile, tmp_path,
                                                                                        capsys):
    from vramfit.fit.profile import Profile

    profile = Profile.load(switch_profile)
    capsys.readouterr()
    assert main(["suggest", "--vram", "24M", "--target", "cpu", "--model", str(switch_profile), *SMALL,
                 "--tokens-per-step", "2048", "--optimizer", "fused,adafactor", "--suggestions-file",
                 str(tmp_path / "s.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema = pytest.importorskip("jsonschema")  # a dev dependency; absent on some GPU images
    schema = json.loads(resources.files("vramfit").joinpath("schemas/suggest.schema.json").read_text())
    jsonschema.validate(doc, schema)
    rows, budget = doc["suggestions"], doc["budget_bytes"]
    combos = {(c, o) for c in ("none", "all") for o in ("fused", "adafactor")}
    assert rows and {(r["checkpoint"], r["optimizer"]) for r in rows} <= combos
    for ck, opt in combos - {(r["checkpoint"], r["optimizer"]) for r in rows}:  # left out: micro-batch 1 too big
        one = Recipe(dtype="float32", optimizer=opt, checkpoint=ck, grad_accum=32)
        assert float(profile.memory(Shape(4, 2, 128, 64, 1, 65), one)[0]) * (1 + profile.margin_rel) > budget
    assert [r["ms_per_step"] for r in rows] == sorted(r["ms_per_step"] for r in rows)
    for r in rows:
        shape, recipe = Shape.of(r), Recipe(dtype="float32", optimizer=r["optimizer"], checkpoint=r["checkpoint"],
                                            grad_accum=r["grad_accum"])
        assert r["batch_size"] * r["grad_accum"] * 64 == 2048
        need = float(profile.memory(shape, recipe)[0]) * (1 + profile.margin_rel)
        assert r["predicted_bytes"] == pytest.approx(need / (1 + profile.margin_rel), abs=1) and need <= budget
        assert r["ms_per_step"] == pytest.approx(float(profile.step_ms(shape, recipe)[0]))
        larger = 2 * r["batch_size"]  # the next micro-batch (powers of two here) does not fit
        twice = Recipe(dtype="float32", optimizer=r["optimizer"], checkpoint=r["checkpoint"],
                       grad_accum=r["grad_accum"] // 2)
        if twice.grad_accum >= 1:
            assert float(profile.memory(shape.with_(batch_size=larger), twice)[0]) * (1 + profile.margin_rel) > budget
        assert f"--grad-accum {r['grad_accum']}" in r["command"] or r["grad_accum"] == 1
    assert main(["suggest", "--vram", "24M", "--target", "cpu", "--model", str(switch_profile), *SMALL,
                 "--tokens-per-step", "2048", "--optimizer", "fused,adafactor", "--hours", "1", "--suggestions-file",
                 str(tmp_path / "s.json"), "--json"]) == 0
    by_hours = json.loads(capsys.readouterr().out)  # one model: what an hour buys is in the order of the time
    assert [r["ms_per_step"] for r in by_hours["suggestions"]] == [r["ms_per_step"] for r in rows]
    assert by_hours["hours"] == 1 and by_hours["ranking"]["value"] == "what the hours buy"
    assert main(["predict", "--model", str(switch_profile), *SMALL, "--batch-size", "8", "--grad-accum", "4",
                 "--checkpoint", "all", "--optimizer", "adafactor", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    shape, recipe = Shape(4, 2, 128, 64, 8, 65), Recipe(dtype="float32", optimizer="adafactor", checkpoint="all",
                                                        grad_accum=4)
    assert got["predicted_bytes"] == int(profile.memory(shape, recipe)[0])
    assert got["ms_per_step"] == pytest.approx(float(profile.step_ms(shape, recipe)[0]))
    assert got["recipe"] == {"grad_accum": 4, "checkpoint": "all", "optimizer": "adafactor"}


def test_a_switch_profile_leaves_out_what_it_did_not_measure(switch_profile, tmp_path, capsys):
    args = ["suggest", "--vram", "24M", "--target", "cpu", "--model", str(switch_profile), *SMALL,
            "--tokens-per-step", "2048", "--suggestions-file", str(tmp_path / "s.json")]
    assert main([*args, "--optimizer", "fused,sgd"]) == 0
    out = capsys.readouterr().out
    assert "not searched: this profile measured the optimizers adafactor, fused, not sgd" in out
    assert main([*args[:2], "64M", *args[3:], "--recipe", "fixed", "--json"]) == 0  # the profile's own switches
    assert {(r["checkpoint"], r["optimizer"]) for r in json.loads(capsys.readouterr().out)["suggestions"]} == {
        ("none", "fused")}
    assert main([*args, "--optimizer", "sgd"]) == 2
    assert capsys.readouterr().err.startswith("error: this profile measured the optimizers")
    assert main(["predict", "--model", str(switch_profile), *SMALL, "--optimizer", "sgd"]) == 2
    capsys.readouterr()
    assert main([*args[:2], "4M", *args[3:]]) == 1  # the least demanding point, named
    err = capsys.readouterr().err
    assert err.startswith("error: nothing fits in 4.00 MiB") and "batch_size=1" in err and "grad_accum=32" in err


@pytest.mark.parametrize("extra,message", [
    (["--checkpoint", "all"], "--checkpoint and --optimizer are searched for a --tokens-per-step"),
    (["--tokens-per-step", "1000", "--block-size", "64"], "not a multiple of any block size"),
    (["--tokens-per-step", "-5"], "--tokens-per-step must be a positive whole number"),
    (["--tokens-per-step", "4096", "--no-profile"], "by the dry run prices each shape by estimates"),
])
def test_bad_recipe_plans_are_one_error_line(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["suggest", "--vram", "8G", "--vocab", "65", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_switch_profile_plans_within_what_it_measured_and_over_gpus(switch_profile, tmp_path, capsys):
    """--within-measured keeps every micro-step inside the profile's ranges; --gpus N splits the tokens per step
    over N GPUs (per GPU: micro-batch x accumulation = tokens / N) and adds the DDP term to each GPU's memory."""
    from gpt.config import count_params
    from vramfit.fit.coverage import check
    from vramfit.fit.profile import Profile

    profile = Profile.load(switch_profile)
    args = ["suggest", "--vram", "64M", "--target", "cpu", "--model", str(switch_profile), "--n-layer", "2,4",
            "--n-head", "2", "--n-embd", "64,128", "--block-size", "64", "--vocab", "65", "--tokens-per-step", "2048",
            "--suggestions-file", str(tmp_path / "s.json"), "--json"]
    assert main(args) == 0
    every = json.loads(capsys.readouterr().out)["suggestions"]
    assert any(not check(profile.ranges, r).inside for r in every)  # micro-batches beyond the measured 4-8
    assert main([*args, "--within-measured"]) == 0
    rows = json.loads(capsys.readouterr().out)["suggestions"]
    assert rows and all(check(profile.ranges, r).inside for r in rows)
    assert main([*args, "--gpus", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gpus"] == 2 and doc["strategy"] == "ddp" and doc["suggestions"]
    for r in doc["suggestions"]:
        assert r["batch_size"] * r["grad_accum"] * 64 * 2 == 2048 == r["tokens_per_step"]
        assert r["command"].startswith("vramfit train --nproc 2 ")
        recipe = Recipe(dtype="float32", optimizer=r["optimizer"], checkpoint=r["checkpoint"],
                        grad_accum=r["grad_accum"])
        one_gpu = float(profile.memory(Shape.of(r), recipe)[0])  # + 4 B a parameter of DDP buckets (gloo: no NCCL)
        ddp = 4 * count_params(r["n_layer"], r["n_embd"], r["block_size"], r["vocab_size"])
        assert r["predicted_bytes"] == pytest.approx(one_gpu + ddp, abs=2) and r["breakdown"]["ddp"] == ddp
    assert main([*args, "--gpus", "3"]) == 2
    assert "does not split evenly over --gpus 3" in capsys.readouterr().err
    assert main(["suggest", "--vram", "8G", "--vocab", "65", "--tokens-per-step", "4096", "--no-profile",
                 "--within-measured"]) == 2
    assert "--within-measured needs a profile" in capsys.readouterr().err
