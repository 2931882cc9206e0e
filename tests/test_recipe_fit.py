"""Sweeps and profiles that vary the recipe's switches (issue 30): `[recipe]` lists in a grid (each combination its
own recipe key), the switch features, and one profile of a recipe family pricing them (`Profile.memory`,
`Profile.step_ms`), checked on the CPU points of results/bench/fit-recipe-cpu.csv
(experiments/bench_fit_recipe.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_workers import fake_cmd

from gpt.config import GPTConfig, count_params
from vramfit.cli import main
from vramfit.dryrun.estimate import EstimateRequest
from vramfit.dryrun.fake_step import run_step
from vramfit.errors import VramfitError
from vramfit.fit.features import REBLOCK, RECIPE_PHYSICS, RECOMPUTE_AT, features, frame_features, switch_columns
from vramfit.fit.memmodel import MemoryModel, fit_points
from vramfit.fit.profile import Profile
from vramfit.fit.throughput import fit_throughput
from vramfit.recipe import Recipe
from vramfit.shape import Shape
from vramfit.store import Store
from vramfit.sweep.grid import load_grid
from vramfit.sweep.session import SweepOptions, run_sweep
from vramfit.sweep.whole_grid import GridChooser

ROOT = Path(__file__).resolve().parents[1]
POINTS = ROOT / "results" / "bench" / "fit-recipe-cpu.csv"
AXES = '[axes]\nn_layer = [1]\nn_head = [2]\nn_embd = [32]\nblock_size = [32]\nbatch_size = [2, 4]\nvocab_size = [64]\n'


def grid_file(tmp_path: Path, recipe: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(AXES + "[recipe]\n" + recipe)
    return path


def test_recipe_lists_make_one_recipe_per_combination_each_its_own_key(tmp_path):
    g = load_grid(grid_file(tmp_path, 'dtype = "float32"\noptimizer = ["fused", "sgd"]\n'
                                      'checkpoint = ["none", "all", "1"]\ngrad_accum = [1, 4]\n'))
    assert len(g.recipes) == 2 * 2 * 2  # "1" is "all": the same recipe, kept once
    assert len({r.resolved("cpu").key() for r in g.recipes}) == 8
    assert [one.recipe for one in g.each_recipe()] == list(g.recipes)
    with pytest.raises(VramfitError, match="8 recipes"):
        _ = g.recipe
    assert load_grid(grid_file(tmp_path, 'dtype = "float32"\n')).recipe == Recipe(dtype="float32")


@pytest.mark.parametrize("recipe,message", [('checkpoint = ["none", "often"]\n', "checkpoint must be"),
                                            ("grad_accum = []\n", "grad_accum is an empty list"),
                                            ("grad_accum = [1, 0]\n", "grad_accum must be an integer")])
def test_a_bad_recipe_list_is_one_error_line(tmp_path, capsys, recipe, message):
    assert main(["sweep", "--grid", str(grid_file(tmp_path, recipe)), "--db", str(tmp_path / "x.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "x.sqlite").exists()


def test_a_sweep_of_recipe_lists_stores_each_recipe_under_its_key(tmp_path):
    g = load_grid(grid_file(tmp_path, 'dtype = "float32"\ncheckpoint = ["none", "all"]\ngrad_accum = [1, 2]\n'))
    db = tmp_path / "s.sqlite"
    res = run_sweep(g, SweepOptions(db, device="cpu", quiet=True, worker_cmd=fake_cmd()), GridChooser())
    assert len(res.sweep_ids) == 4 and res.counts["ok"] == 8
    with Store(db) as store:
        df = store.points_frame()
    assert sorted(df.groupby("recipe_key").size()) == [2, 2, 2, 2]
    assert {r.resolved("cpu").key() for r in g.recipes} == set(df["recipe_key"])
    again = run_sweep(g, SweepOptions(db, device="cpu", quiet=True, worker_cmd=fake_cmd()), GridChooser())
    assert again.resumed == 8 and not again.counts  # each recipe's points are found under its own key


def test_switch_features_count_what_each_switch_keeps():
    L, H, C, T, B, V = 4, 2, 64, 32, 2, 128
    shape = np.array([[L, H, C, T, B, V]])
    mc, N = GPTConfig(L, H, C, T, V), B * T
    plain = features(L, H, C, T, B, V, switches=switch_columns(shape, Recipe(optimizer="sgd")))
    every2 = features(L, H, C, T, B, V, switches=switch_columns(shape, Recipe(checkpoint="2", grad_accum=2)))
    assert plain["state"][0] == sum(mc.optimizer_state_bytes("sgd").values()) == 4 * count_params(L, C, T, V)
    assert every2["state"][0] == sum(mc.optimizer_state_bytes("fused").values())
    assert (plain["acts"][0], plain["ckpt_inputs"][0], plain["accum_grads"][0]) == (N * L * C, 0, 0)
    assert (every2["acts"][0], every2["ckpt_inputs"][0]) == (N * 2 * C, N * 2 * C)  # blocks 0 and 2 checkpointed
    assert every2["accum_grads"][0] == every2["params"][0]  # all alive from step 1
    # at the recompute peak, beside them: the head's new part (V x C, in autograd's input buffer) and the MLP
    # projection's new weight gradient (4C x C, + C)
    assert every2["grads_deepest"][0] == every2["params"][0] + V * C + 4 * C * C + C
    assert every2["inputs_deepest"][0] == N * C  # block 0's input; block 2's own is in `recompute`
    # without them, the plain feature columns are unchanged: a one-recipe profile (GPT-2 today) fits as before
    assert set(features(L, H, C, T, B, V)) == {"params", "tokens", "logits", "acts", "attn", "embed"}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,checkpoint,accum", [("fused", "all", 1), ("sgd", "2", 1), ("adafactor", "all", 2)])
def test_the_recompute_columns_are_the_dry_runs_peak(optimizer, checkpoint, accum):
    """Where a block's recompute holds the peak (at block 0, at the deepest checkpointed block after a plain one,
    with accumulation), its columns at the physical coefficients (fp32: 4 B a weight, gradient or block input, the
    state once, 84 B per token per channel for the recomputed block's activations and its input, 64 for a plain
    block's) plus the per-token terms the fit leaves to its constant (the inputs x and y; a block's LayerNorm
    statistics and log-sum-exp) are the CPU dry run's peak to 4 KiB (per-tensor step counters, the position ids)."""
    L, H, C, T, B, V = 4, 2, 64, 32, 4, 128
    N, stat = B * T, 16 * B * T + 4 * B * T * H
    recipe = Recipe(dtype="float32", optimizer=optimizer, checkpoint=checkpoint, grad_accum=accum)
    peak = run_step(EstimateRequest(GPTConfig(L, H, C, T, V), B, recipe, target="cpu")).peak_bytes
    f = {k: v[0] for k, v in features(L, H, C, T, B, V, switches=switch_columns(np.array([[L, H, C, T, B, V]]),
                                                                                 recipe)).items()}
    physics = max(4 * f["params"] + f["state"] + 84 * f["recompute"] + 4 * f[f"grads_{at}"] + 4 * f[f"inputs_{at}"]
                  + f[f"acts_{at}"] * (64 + stat / (N * C)) + stat + 16 * N for at in RECOMPUTE_AT)
    assert 0 <= peak - physics <= 4096, (peak, physics)


@pytest.fixture(scope="module")
def cpu_points() -> pd.DataFrame:
    return pd.read_csv(POINTS)


def test_one_model_of_the_switches_predicts_held_out_cpu_points(cpu_points):
    """Fitted on two thirds of the measured CPU points (18 recipes), it predicts the third it never saw; its
    coefficients are the physics: the optimizer state exactly once, 4 B per fp32 gradient kept across micro-steps."""
    ok = cpu_points[cpu_points["status"] == "ok"].reset_index(drop=True)
    X, y = frame_features(ok, switches=True), ok["tracked_bytes"].to_numpy(dtype=float)
    held = np.arange(len(ok)) % 3 == 0
    model = MemoryModel(RECIPE_PHYSICS).fit(X[~held], y[~held])
    err = np.abs(model.predict(X[held]) / y[held] - 1)
    assert err.max() <= 0.005 and err.mean() <= 0.001, (err.max(), err.mean())
    coef = dict(zip(model.features, model.coef_, strict=True))
    assert 0.97 <= coef["state"] <= 1.03 and 3.8 <= coef["accum_grads"] <= 4.2, coef
    rec = dict(zip(REBLOCK, model.reblock_coef_, strict=True))  # fp32 weights, gradients and block inputs: 4 B each
    assert all(3.9 <= rec[k] <= 4.1 for k in ("params", "grads", "inputs")) and 0.99 <= rec["state"] <= 1.01, rec
    assert rec["acts"] == coef["acts"] and 80 <= rec["recompute"] <= 88, rec  # a block's activations + its input


def test_the_time_model_of_the_switches_predicts_held_out_cpu_steps(cpu_points):
    """Each point's best step held out (the CPU time it used), within 5 % on average (the FLOPs-only line: 15.9 %);
    a recomputed forward FLOP costs what a first one does, and each block and recomputed block costs its ops'
    dispatch (results/bench/fit-recipe-cpu.md)."""
    tp = fit_throughput(cpu_points, switches=True)
    assert tp.metrics["ours"]["loo"]["mape"] <= 0.05 < tp.metrics["flops"]["loo"]["mape"], tp.metrics
    c = {r["term"]: r["value"] for r in tp.model.coefficients()}
    assert 0.8 <= c["recompute"] / c["flops"] <= 1.25 and c["blocks"] > 0 and c["recompute_blocks"] > 0, c


def test_the_profile_prices_the_switches_and_refuses_what_it_cannot(cpu_points, tmp_path):
    few = cpu_points[(cpu_points["n_layer"] == 4) & ~cpu_points["recipe"].str.contains('adafactor|sgd|"2"')]
    few = few.reset_index(drop=True)  # 4 shapes x 4 recipes (fused AdamW, checkpoint none or all, accum 1 or 2)
    profile = fit_points(few)
    assert profile.switches and profile.model.switches and profile.recipe_key == Recipe(dtype="float32",
                                                                                       compile=False).key()
    shape = Shape(4, 2, 128, 64, 8, 256)
    mem = {k: float(profile.memory(shape, Recipe(dtype="float32", **r))[0]) for k, r in {
        "plain": {}, "all": {"checkpoint": "all"}, "accum": {"grad_accum": 2}}.items()}
    assert mem["all"] < mem["plain"] < mem["accum"]
    row = few[(few["n_embd"] == 128) & (few["batch_size"] == 8) & (few["recipe"].str.contains('"all"'))
              & ~few["recipe"].str.contains("grad_accum")]
    assert abs(mem["all"] / float(row["tracked_bytes"].iloc[0]) - 1) < 0.02
    ms = {k: float(profile.step_ms(shape, Recipe(dtype="float32", **r))[0]) for k, r in {
        "plain": {}, "all": {"checkpoint": "all"}, "accum": {"grad_accum": 2}}.items()}
    assert ms["plain"] < ms["all"] and 1.5 * ms["plain"] < ms["accum"] < 2.2 * ms["plain"]
    with pytest.raises(VramfitError, match="measured the optimizers"):
        profile.memory(shape, Recipe(dtype="float32", optimizer="sgd"))
    with pytest.raises(VramfitError, match="recipe family"):
        profile.memory(shape, Recipe(dtype="bfloat16"))
    back = Profile.load(profile.save(tmp_path / "p.json"))
    assert back.switches == profile.switches
    assert back.memory(shape, Recipe(dtype="float32", checkpoint="all")) == pytest.approx(mem["all"])
    one = fit_points(few[few["recipe_key"] == few["recipe_key"].iloc[0]])
    assert not one.switches and one.memory(shape)[0] > 0
    with pytest.raises(VramfitError, match="cannot price other switches"):
        one.memory(shape, Recipe.from_dict({**one.recipe, "checkpoint": "all"}))


def test_fit_refuses_points_of_both_kinds_with_one_error_line(tmp_path, capsys):
    """A nanochat model among recipes that vary the switches: FAMILY and RECIPE_PHYSICS are separate models, so
    `vramfit fit` refuses the points (docs/fit.md) rather than fitting one that prices neither."""
    path = tmp_path / "g.toml"
    path.write_text(AXES + 'arch = ["gpt2", "nanochat"]\n[recipe]\ndtype = "float32"\n'
                           'checkpoint = ["none", "all"]\n')
    db = tmp_path / "both.sqlite"
    res = run_sweep(load_grid(path), SweepOptions(db, device="cpu", quiet=True, worker_cmd=fake_cmd()), GridChooser())
    assert res.counts["ok"] >= 8
    with Store(db) as store:
        df = store.points_frame()
    with pytest.raises(VramfitError, match="vary the recipe's switches and include"):
        fit_points(df)
    assert main(["fit", "--db", str(db), "--models", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "vary the recipe's switches" in err[0], err
    assert not list((tmp_path / "models").glob("*.json"))
    gpt2 = df[df["arch"].fillna("gpt2") == "gpt2"]  # the GPT-2 points alone price the switches
    assert fit_points(gpt2.reset_index(drop=True)).model.features == RECIPE_PHYSICS


def test_a_switch_model_and_a_family_model_round_trip_their_own_coefficients(cpu_points):
    """One MemoryModel class keeps both sets (the family model's: tests/test_nanochat_fit.py): the switch model's
    state and recompute coefficients round-trip, `layer_coef_` is `layer_[0]`, and its profile prices GPT-2 only."""
    few = cpu_points[(cpu_points["n_layer"] == 4) & cpu_points["recipe"].str.contains('"all"')].reset_index(drop=True)
    profile = fit_points(few)
    model = profile.model
    with pytest.raises(VramfitError, match="switches of GPT-2 models"):  # a nanochat shape is not priced as GPT-2
        profile.memory(Shape(4, 2, 128, 64, 8, 256, "nanochat"))
    assert model.switches and model.step_features == () and model.layer_coef_ == model.layer_[0]
    d = model.to_dict()
    back = MemoryModel.from_dict(d)
    assert back.step_state_coef_ == model.step_state_coef_ and np.array_equal(back.reblock_coef_, model.reblock_coef_)
    assert back.to_dict() == d and "step_extra" not in d and "family" not in d
    X = frame_features(few, switches=True)
    assert np.array_equal(back.predict(X), model.predict(X))
    units = {r["term"]: r["unit"] for r in model.coefficients()}
    assert units["recompute: grads"] == "B per gradient element"
    with pytest.raises(ValueError, match="recompute coefficients"):
        MemoryModel.from_dict({**d, "reblock_coef": [1.0]})
